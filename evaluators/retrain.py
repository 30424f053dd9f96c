"""Hard-label evaluation: train fresh networks from scratch on a synthetic set, test them.

For each architecture, `runs` networks are trained under a named protocol (default `dsa`) and
tested on the real test split at the **final epoch**; nothing is selected on the test set unless
asked for (`select`): `val` picks the epoch on a held-out split of the real training set,
`test-best` is the legacy best-test-accuracy number and is labelled as such everywhere.
Every run r has its own seeds for initialization and for the data/augmentation stream, derived
from `seed`, so a result is reproducible and runs are independent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from condense.data import RealData
from condense.errors import CondenseError
from condense.models import build_model
from condense.progress import Reporter
from condense.runtime import derive_seed, make_generator
from condense.synthetic import SyntheticSet
from condense.train import TrainData, accuracy, total_epochs, train_model
from evaluators.protocols import Protocol


@dataclass
class ArchResult:
    """Accuracies (fractions) of the runs of one architecture on one set."""

    arch: str
    accs: list[float] = field(default_factory=list)  # the reported number of each run (see `selection`)
    lr: float = 0.01
    final_accs: list[float] = field(default_factory=list)  # final-epoch accuracy of each run
    test_best_accs: list[float] = field(default_factory=list)  # best test checkpoint of each run (select != final)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs)) if self.accs else float("nan")

    @property
    def std(self) -> float:
        """Population std over runs (np.std, as the DC/DSA/MTT code reports it)."""
        return float(np.std(self.accs)) if self.accs else float("nan")


@dataclass
class EvalSettings:
    """How to evaluate: the protocol, the networks, and which epoch's accuracy is reported.

    select: final (default: the last epoch's test accuracy); val (the test accuracy at the epoch
        with the best accuracy on `val`, a held-out split of the real training set); test-best (the
        best test accuracy seen at any checkpoint: the legacy, optimistic number, always labelled).
    every: checkpoint interval in epochs for val / test-best (0: a tenth of the epochs).
    """

    protocol: Protocol
    archs: list[str]
    runs: int
    seed: int = 0
    compile: bool = False
    select: str = "final"
    every: int = 0
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # model-input images and labels, for select=val

    def __post_init__(self) -> None:
        if self.select not in ("final", "val", "test-best"):
            raise CondenseError(f"--select must be final, val or test-best (got '{self.select}').")


def check_compatible(synth: SyntheticSet, real: RealData, where: str) -> None:
    m = synth.meta
    if m.dataset != real.info.name:
        raise CondenseError(f"{where} was distilled from '{m.dataset}' but is being evaluated on "
                            f"'{real.info.name}'. Pass --dataset {m.dataset} (or omit --dataset).")
    if (m.channels, m.height, m.num_classes) != (real.info.channels, real.info.size, real.info.num_classes):
        raise CondenseError(f"{where} has images {m.channels}x{m.height}x{m.width} over {m.num_classes} classes, "
                            f"but {real.info.name} has {real.info.channels}x{real.info.size} over "
                            f"{real.info.num_classes}; the set does not belong to this dataset.")


def train_and_test(images: torch.Tensor, targets: torch.Tensor, real: RealData, settings: EvalSettings, arch: str,
                   lr: float, tag: str, run: int) -> tuple[float, float, float | None]:
    """One run: a fresh `arch` trained on (images, targets) under the protocol.
    Returns (reported accuracy, final-epoch accuracy, best test checkpoint or None): with checkpoints
    the three legacy and honest numbers come from the same network, so their gap is measured."""
    info, device, cfg = real.info, real.device, settings.protocol.train
    if settings.select == "val" and settings.val is None:
        raise CondenseError("--select val needs a validation split (see --val-size).")
    net = build_model(arch, info.channels, info.num_classes, info.size,
                      seed=derive_seed(settings.seed, tag, arch, run, "init")).to(device)
    gen = make_generator(derive_seed(settings.seed, tag, arch, run, "data"))
    checkpoints: list[tuple[float, float]] = []  # (val accuracy, test accuracy)
    on_epoch = None
    if settings.select != "final":
        last = total_epochs(cfg) - 1
        every = settings.every or max(1, cfg.epochs // 10)

        def on_epoch(epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            if (epoch + 1) % every == 0 or epoch == last:
                val = -1.0
                if settings.select == "val":
                    vx, vy = settings.val  # type: ignore[misc]
                    val = accuracy(model, ((vx[i:i + 256], vy[i:i + 256]) for i in range(0, len(vy), 256)))
                checkpoints.append((val, accuracy(model, real.test_batches())))

    train_model(net, TrainData.tensors(images.to(device), targets.to(device)), cfg, gen, lr=lr,
                allow_flip=info.allow_flip, compile=settings.compile, on_epoch=on_epoch)
    if settings.select == "final":
        final = accuracy(net, real.test_batches())
        return final, final, None
    final, test_best = checkpoints[-1][1], max(t for _, t in checkpoints)
    if settings.select == "test-best":
        return test_best, final, test_best
    best_val = max(v for v, _ in checkpoints)
    return next(t for v, t in checkpoints if v == best_val), final, test_best  # earliest epoch with the best val


def evaluate_set(synth: SyntheticSet, real: RealData, settings: EvalSettings, reporter: Reporter | None = None,
                 label: str = "") -> list[ArchResult]:
    """Evaluate one synthetic set for every architecture in `settings.archs`."""
    reporter = reporter or Reporter()
    check_compatible(synth, real, label or "the synthetic set")
    real = real.with_preprocess(synth.preprocess)
    proto = settings.protocol
    lr = synth.lr if (proto.use_learned_lr and synth.lr is not None) else proto.train.lr
    targets = synth.labels if proto.train.loss == "ce" or synth.soft_labels is None else synth.soft_labels
    out = []
    for arch in settings.archs:
        res = ArchResult(arch, lr=lr)
        with reporter.task(f"eval {label} {arch}", settings.runs) as update:
            for r in range(settings.runs):
                acc, final, best = train_and_test(synth.images, targets, real, settings, arch, lr, "eval", r)
                res.accs.append(acc)
                res.final_accs.append(final)
                if best is not None:
                    res.test_best_accs.append(best)
                update(acc=acc)
        out.append(res)
    return out


def evaluate_random(real: RealData, ipc: int, settings: EvalSettings,
                    reporter: Reporter | None = None) -> list[ArchResult]:
    """The random-subset baseline: run r trains on its own random `ipc`-per-class real subset."""
    reporter = reporter or Reporter()
    lr = settings.protocol.train.lr
    out = []
    for arch in settings.archs:
        res = ArchResult(arch, lr=lr)
        with reporter.task(f"eval random ipc {ipc} {arch}", settings.runs) as update:
            for r in range(settings.runs):
                x, y = real.random_subset(ipc, make_generator(derive_seed(settings.seed, "baseline", ipc, r)))
                acc, final, best = train_and_test(x, y, real, settings, arch, lr, "baseline", r)
                res.accs.append(acc)
                res.final_accs.append(final)
                if best is not None:
                    res.test_best_accs.append(best)
                update(acc=acc)
        out.append(res)
    return out
