"""Hard-label evaluation: train fresh networks from scratch on a synthetic set, test them.

For each architecture, `runs` networks are trained under a named protocol (default `dsa`) and
tested on the real test split at the **final epoch**; nothing is selected on the test set.
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
from condense.train import TrainData, accuracy, train_model
from evaluators.protocols import Protocol


@dataclass
class ArchResult:
    """Accuracies (fractions) of the runs of one architecture on one set."""

    arch: str
    accs: list[float] = field(default_factory=list)
    lr: float = 0.01

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs)) if self.accs else float("nan")

    @property
    def std(self) -> float:
        """Population std over runs (np.std, as the DC/DSA/MTT code reports it)."""
        return float(np.std(self.accs)) if self.accs else float("nan")


def check_compatible(synth: SyntheticSet, real: RealData, where: str) -> None:
    m = synth.meta
    if m.dataset != real.info.name:
        raise CondenseError(f"{where} was distilled from '{m.dataset}' but is being evaluated on "
                            f"'{real.info.name}'. Pass --dataset {m.dataset} (or omit --dataset).")
    if (m.channels, m.height, m.num_classes) != (real.info.channels, real.info.size, real.info.num_classes):
        raise CondenseError(f"{where} has images {m.channels}x{m.height}x{m.width} over {m.num_classes} classes, "
                            f"but {real.info.name} has {real.info.channels}x{real.info.size} over "
                            f"{real.info.num_classes}; the set does not belong to this dataset.")


def train_and_test(images: torch.Tensor, targets: torch.Tensor, real: RealData, protocol: Protocol, arch: str,
                   seed: int, lr: float, tag: str, run: int, compile: bool = False) -> float:
    """One run: a fresh `arch` trained on (images, targets) under `protocol`, test accuracy."""
    info = real.info
    device = real.device
    net = build_model(arch, info.channels, info.num_classes, info.size,
                      seed=derive_seed(seed, tag, arch, run, "init")).to(device)
    gen = make_generator(derive_seed(seed, tag, arch, run, "data"))
    train_model(net, TrainData.tensors(images.to(device), targets.to(device)), protocol.train, gen, lr=lr,
                allow_flip=info.allow_flip, compile=compile)
    return accuracy(net, real.test_batches())


def evaluate_set(synth: SyntheticSet, real: RealData, protocol: Protocol, archs: list[str], runs: int,
                 seed: int = 0, reporter: Reporter | None = None, label: str = "", compile: bool = False
                 ) -> list[ArchResult]:
    """Evaluate one synthetic set under `protocol` for every architecture in `archs`."""
    reporter = reporter or Reporter()
    check_compatible(synth, real, label or "the synthetic set")
    real = real.with_preprocess(synth.preprocess)
    lr = synth.lr if (protocol.use_learned_lr and synth.lr is not None) else protocol.train.lr
    targets = synth.labels if protocol.train.loss == "ce" or synth.soft_labels is None else synth.soft_labels
    out = []
    for arch in archs:
        res = ArchResult(arch, lr=lr)
        with reporter.task(f"eval {label} {arch}", runs) as update:
            for r in range(runs):
                res.accs.append(train_and_test(synth.images, targets, real, protocol, arch, seed, lr, "eval", r,
                                               compile))
                update(acc=res.accs[-1])
        out.append(res)
    return out


def evaluate_random(real: RealData, ipc: int, protocol: Protocol, archs: list[str], runs: int, seed: int = 0,
                    reporter: Reporter | None = None, compile: bool = False) -> list[ArchResult]:
    """The random-subset baseline: run r trains on its own random `ipc`-per-class real subset."""
    reporter = reporter or Reporter()
    out = []
    for arch in archs:
        res = ArchResult(arch, lr=protocol.train.lr)
        with reporter.task(f"eval random ipc {ipc} {arch}", runs) as update:
            for r in range(runs):
                x, y = real.random_subset(ipc, make_generator(derive_seed(seed, "baseline", ipc, r)))
                res.accs.append(train_and_test(x, y, real, protocol, arch, seed, protocol.train.lr, "baseline", r,
                                               compile))
                update(acc=res.accs[-1])
        out.append(res)
    return out
