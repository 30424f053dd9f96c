"""Hard-label evaluation: train fresh networks from scratch on a synthetic set, test them.

For each architecture, `runs` networks are trained under a named protocol (default `dsa`) and
tested on the real test split at the **final epoch**; nothing is selected on the test set unless
asked for (`select`): `val` picks the epoch on a held-out split of the real training set,
`test-best` is the legacy best-test-accuracy number and is labelled as such everywhere.
Every run r has its own seeds for initialization and for the data/augmentation stream, derived
from `seed`, so a result is reproducible and runs are independent.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import condense.classes as classes
from condense.data import RealData
from condense.errors import CondenseError
from condense.io import tensor_digest
from condense.models import build_model
from condense.progress import Reporter
from condense.relabel import ReplayConfig, relabel, replay_data
from condense.runtime import derive_seed, make_generator
from condense.synthetic import SyntheticSet
from condense.train import TrainData, accuracy, accuracy_runs, total_epochs, train_model, train_runs
from evaluators.protocols import Protocol, get_protocol
from evaluators.stack import ConvNetStack, stackable


MAX_STACK = 5  # runs trained together at most (activation memory grows with it)


@dataclass
class ArchResult:
    """Accuracies (fractions) of the runs of one architecture on one set."""

    arch: str
    accs: list[float] = field(default_factory=list)  # the reported number of each run (see `selection`)
    lr: float = 0.01
    final_accs: list[float] = field(default_factory=list)  # final-epoch accuracy of each run
    test_best_accs: list[float] = field(default_factory=list)  # best test checkpoint of each run (select != final)
    val_accs: list[float] = field(default_factory=list)  # best validation accuracy of each run (select = val)
    lr_grid_val: dict[float, float] = field(default_factory=dict)  # --lr-grid: mean best validation accuracy per lr

    @property
    def mean(self) -> float:
        """Mean over the runs that did not diverge (a diverged run's accuracy is NaN)."""
        ok = [a for a in self.accs if a == a]
        return float(np.mean(ok)) if ok else float("nan")

    @property
    def std(self) -> float:
        """Population std over the runs that did not diverge (np.std, as the DC/DSA/MTT code reports it)."""
        ok = [a for a in self.accs if a == a]
        return float(np.std(ok)) if ok else float("nan")

    @property
    def diverged(self) -> int:
        """Runs whose training diverged (non-finite weights): reported as such, not as ~chance accuracy."""
        return sum(a != a for a in self.accs)


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
    lr_grid: list[float] = field(default_factory=list)  # with select=val: learning rates to choose from on val
    stack: bool = True  # train up to MAX_STACK runs of a ConvNet together (same numbers, fewer passes)
    teacher: Any = None  # evaluators.softlabel.Teacher, for protocols with soft labels (static / teacher)
    cache: RunCache | None = None  # finished runs (resume an interrupted evaluation); None: always train
    device: str = "cpu"  # the device type the runs train on (part of a cached run's identity)

    def __post_init__(self) -> None:
        if self.select not in ("final", "val", "test-best"):
            raise CondenseError(f"--select must be final, val or test-best (got '{self.select}').")
        if self.lr_grid and self.select != "val":
            raise CondenseError("--lr-grid picks the learning rate on the validation split, so it needs --select val "
                                "(choosing it by test accuracy is the habit this tool exists to end).")
        if any(not v > 0 for v in self.lr_grid):
            raise CondenseError(f"--lr-grid values must be positive learning rates (got {self.lr_grid}).")
        if self.every < 0:
            raise CondenseError(f"--select-every must be 0 (a tenth of the epochs) or a positive number of epochs "
                                f"(got {self.every}).")


def check_compatible(synth: SyntheticSet, real: RealData, where: str) -> None:
    """The set belongs to the dataset: same kind (a folder dataset may have moved), same image shape, and
    the same class order (`condense.classes`)."""
    m = synth.meta
    if m.dataset != real.info.name and m.dataset.partition(":")[0] != real.info.name.partition(":")[0]:
        raise CondenseError(f"{where} was distilled from '{m.dataset}' but is being evaluated on "
                            f"'{real.info.name}'. Pass --dataset {m.dataset} (or omit --dataset).")
    if (m.channels, m.height, m.num_classes) != (real.info.channels, real.info.size, real.info.num_classes):
        raise CondenseError(f"{where} has images {m.channels}x{m.height}x{m.width} over {m.num_classes} classes, "
                            f"but {real.info.name} has {real.info.channels}x{real.info.size} over "
                            f"{real.info.num_classes}; the set does not belong to this dataset.")
    classes.check(m, real.info, where)


def train_and_test(data: list[tuple[torch.Tensor, ...]], real: RealData, settings: EvalSettings, arch: str,
                   lr: float, tag: str, runs: list[int]) -> list[tuple[float, float, float | None, float | None]]:
    """Runs `runs` (run r trains a fresh `arch` on data[i] = (images, targets, classes)), together as one
    `ConvNetStack` when `settings.stack` allows it, otherwise one after the other.
    Returns per run (reported accuracy, final-epoch accuracy, best test checkpoint or None, best
    validation accuracy or None): with checkpoints the legacy and honest numbers come from the same
    network, so their gap is measured."""
    info, device, cfg = real.info, real.device, settings.protocol.train
    if settings.select == "val" and settings.val is None:
        raise CondenseError("--select val needs a validation split (see --val-size).")
    def make(r: int) -> torch.nn.Module:
        return build_model(arch, info.channels, info.num_classes, info.size,
                           seed=derive_seed(settings.seed, tag, arch, r, "init")).to(device)

    nets = [make(runs[0])]
    together = settings.stack and len(runs) > 1 and stackable(nets[0]) and cfg.grad_penalty == 0
    if not together and len(runs) > 1:
        return [res for i, r in enumerate(runs)
                for res in train_and_test(data[i:i + 1], real, settings, arch, lr, tag, [r])]
    nets += [make(r) for r in runs[1:]]
    gens = [make_generator(derive_seed(settings.seed, tag, arch, r, "data")) for r in runs]
    datas = [TrainData.tensors(x.to(device), y.to(device), c.to(device)) if not rest else
             replay_data(rest[0], x.to(device), c.to(device), info.allow_flip) for x, y, c, *rest in data]
    model: torch.nn.Module = ConvNetStack(nets) if together else nets[0]

    def test_accs(m: torch.nn.Module, batches) -> list[float]:
        return accuracy_runs(m, batches) if together else [accuracy(m, batches)]

    checkpoints: list[list[tuple[float, float]]] = [[] for _ in runs]  # per run: (val accuracy, test accuracy)
    on_epoch = None
    if settings.select != "final":
        last = total_epochs(cfg) - 1
        every = settings.every or max(1, cfg.epochs // 10)

        def on_epoch(epoch: int, m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            if (epoch + 1) % every == 0 or epoch == last:
                vals = [-1.0] * len(runs)
                if settings.select == "val":
                    vx, vy = settings.val  # type: ignore[misc]
                    vals = test_accs(m, [(vx[i:i + 256], vy[i:i + 256]) for i in range(0, len(vy), 256)])
                for ck, v, t in zip(checkpoints, vals, test_accs(m, real.test_batches())):
                    ck.append((v, t))

    teacher = _teacher(settings) if settings.protocol.labels == "teacher" else None
    if together:
        train_runs(model, datas, cfg, gens, lr=lr, allow_flip=info.allow_flip, compile=settings.compile,
                   on_epoch=on_epoch, teacher=teacher)
    else:
        train_model(model, datas[0], cfg, gens[0], lr=lr, allow_flip=info.allow_flip, compile=settings.compile,
                    on_epoch=on_epoch, teacher=teacher)
    finite = [_finite(model, i, len(runs)) for i in range(len(runs))]
    if not all(finite):  # a diverged run is reported as such (NaN), not as an accuracy near chance
        accs = test_accs(model, real.test_batches())
        return [(a, a, None, None) if ok else (float("nan"), float("nan"), None, None) for a, ok in zip(accs, finite)]
    if settings.select == "final":
        return [(a, a, None, None) for a in test_accs(model, real.test_batches())]
    out = []
    for ck in checkpoints:
        final, test_best = ck[-1][1], max(t for _, t in ck)
        if settings.select == "test-best":
            out.append((test_best, final, test_best, None))
        else:
            best_val = max(v for v, _ in ck)  # the earliest epoch with the best val accuracy
            out.append((next(t for v, t in ck if v == best_val), final, test_best, best_val))
    return out


def _finite(model: torch.nn.Module, run: int, runs: int) -> bool:
    """Whether run `run`'s weights are all finite (a stack keeps run r in the r-th slice of dim 0)."""
    return all(bool(torch.isfinite(p.chunk(runs, 0)[run] if runs > 1 else p).all()) for p in model.parameters())


class RunCache:
    """Finished runs on disk (one small JSON each, written atomically), keyed by everything that
    determines a run: the training data, protocol, architecture, run index, seeds, lr, selection,
    teachers and execution mode. An interrupted evaluation, run again, trains only what is missing."""

    def __init__(self, root: str | os.PathLike, read: bool = True) -> None:
        self.root = Path(root)
        self.read = read  # False (--fresh): retrain everything, but still record the new results
        self.warned = False

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple | None:
        if not self.read:
            return None
        path = self.root / f"{key}.json"
        try:
            return tuple(json.loads(path.read_text())["result"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, result: tuple, parts: dict[str, Any]) -> None:
        from condense.io import atomic_path

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / f"{key}.json") as tmp:
                tmp.write_text(json.dumps({"result": list(result), "run": parts}, default=str))
        except OSError as e:  # a read-only or full cache costs resumability, not the evaluation
            if not self.warned:
                print(f"warning: cannot write the run cache {self.root} ({e}); this evaluation cannot be resumed.",
                      file=sys.stderr)
                self.warned = True


def _run_all(res: ArchResult, settings: EvalSettings, update, train_group, run_key) -> None:
    """Train the runs in groups (all together when stacking, else one at a time) and record them;
    runs found in `settings.cache` are taken from it, the others trained and stored there."""
    size = MAX_STACK if settings.stack else 1
    for start in range(0, settings.runs, size):
        group = list(range(start, min(start + size, settings.runs)))
        parts = {r: run_key(r) for r in group}
        done = {r: settings.cache.get(RunCache.key(parts[r])) for r in group} if settings.cache else {}
        todo = [r for r in group if done.get(r) is None]
        if todo:
            for r, result in zip(todo, train_group(todo)):
                done[r] = result
                if settings.cache:
                    settings.cache.put(RunCache.key(parts[r]), result, parts[r])
        for r in group:
            acc, final, best, val = done[r]  # type: ignore[misc]
            res.accs.append(acc)
            res.final_accs.append(final)
            if best is not None:
                res.test_best_accs.append(best)
            if val is not None:
                res.val_accs.append(val)
            update(acc=acc)


def _run_parts(settings: EvalSettings, data: str, arch: str, lr: float, tag: str) -> dict[str, Any]:
    """What determines every run of one evaluation (the run index is added per run)."""
    from condense.io import code_version

    return {"v": 1, "condense": code_version(), "device": settings.device, "data": data,
            "protocol": settings.protocol.to_json(), "arch": arch, "lr": lr, "tag": tag, "seed": settings.seed,
            "select": settings.select, "every": settings.every if settings.select != "final" else None,
            "val": tensor_digest(*settings.val) if settings.val is not None else None,
            "teacher": _teacher(settings).description if settings.protocol.labels == "teacher" else None,
            "compile": settings.compile, "stack": settings.stack}


def _evaluate_arch(settings: EvalSettings, arch: str, lr: float, title: str, reporter: Reporter,
                   train_group, data: str, tag: str) -> ArchResult:
    """All runs of one architecture; with `settings.lr_grid`, all runs at every grid lr, keeping the lr
    with the best mean validation accuracy (chosen without looking at the test set)."""
    grid = settings.lr_grid or [lr]
    tried = []
    for value in grid:
        res = ArchResult(arch, lr=value)
        name = title if len(grid) == 1 else f"{title} lr {value:g}"
        common = _run_parts(settings, data, arch, value, tag)
        with reporter.task(name, settings.runs) as update:
            _run_all(res, settings, update, lambda runs: train_group(runs, value), lambda r: {**common, "run": r})
        tried.append(res)
    if len(tried) == 1:
        return tried[0]
    best = max(tried, key=lambda r: float(np.mean(r.val_accs)))  # the first of equals: the grid's order
    best.lr_grid_val = {r.lr: float(np.mean(r.val_accs)) for r in tried}
    return best


def evaluate_set(synth: SyntheticSet, real: RealData, settings: EvalSettings, reporter: Reporter | None = None,
                 label: str = "") -> list[ArchResult]:
    """Evaluate one synthetic set for every architecture in `settings.archs`."""
    reporter = reporter or Reporter()
    check_compatible(synth, real, label or "the synthetic set")
    real = real.with_preprocess(synth.preprocess)
    proto = settings.protocol
    lr = synth.lr if (proto.use_learned_lr and synth.lr is not None) else proto.train.lr
    targets = synth.labels
    if proto.labels == "static":
        if synth.soft_labels is not None:  # the file's own soft labels (mode S)
            targets = synth.soft_labels
            kind = synth.soft_attrs.get("kind", "logits")
            if kind != proto.train.soft_kind:
                settings = replace(settings, protocol=replace(proto, train=proto.train.with_(soft_kind=kind)))
        else:
            targets = _teacher(settings).label(synth.images.to(real.device))
    record: tuple = ()
    if proto.labels == "replay":  # the file's recorded per-epoch labels (checked against the protocol)
        if synth.replay is None:
            raise CondenseError(f"{label or 'The set'} has no replayable labels, which protocol {proto.name} trains "
                                f"on. Evaluate it under mode M (--protocol kd-sre2l: the teachers label every batch "
                                f"online) or distil it with relabelling on.")
        synth.replay.check_matches(proto.train, label or "the set")
        record = (synth.replay,)
    data = f"set {tensor_digest(synth.images, targets)} {record[0].digest() if record else ''} {_pre_digest(real)}"
    out = []
    for arch in settings.archs:
        out.append(_evaluate_arch(settings, arch, lr, f"eval {label} {arch}", reporter, lambda runs, lr_: train_and_test(
            [(synth.images, targets, synth.labels, *record)] * len(runs), real, settings, arch, lr_, "eval", runs),
            data, "eval"))
    return out


def evaluate_random(real: RealData, ipc: int, settings: EvalSettings,
                    reporter: Reporter | None = None) -> list[ArchResult]:
    """The random-subset baseline: run r trains on its own random `ipc`-per-class real subset."""
    reporter = reporter or Reporter()
    lr = settings.protocol.train.lr
    out = []
    for arch in settings.archs:
        out.append(_evaluate_arch(settings, arch, lr, f"eval random ipc {ipc} {arch}", reporter,
                                  lambda runs, lr_: train_and_test([_subset(real, ipc, settings, r) for r in runs],
                                                                   real, settings, arch, lr_, "baseline", runs),
                                  f"random ipc {ipc} {_pre_digest(real)}", "baseline"))
    return out


def _pre_digest(real: RealData) -> str:
    """The real data as runs see it: dataset, training split, and the preprocessing (mean/std, ZCA)."""
    pre = real.pre
    zca = tensor_digest(pre.zca.matrix, pre.zca.mean) if pre.zca is not None else "none"
    test = real.test_digest()
    return (f"{real.info.name} [{real.subset or 'whole'}] {real.train.labels.numel()} test {test} mean {pre.mean} "
            f"std {pre.std} zca {zca}")


def _subset(real: RealData, ipc: int, settings: EvalSettings, run: int) -> tuple[torch.Tensor, ...]:
    """Run `run`'s random subset: images, targets as the protocol labels a set (static: teacher
    logits), classes."""
    x, y = real.random_subset(ipc, make_generator(derive_seed(settings.seed, "baseline", ipc, run)))
    if settings.protocol.labels == "replay":  # relabelled here by the evaluation's teachers, as a set would be
        t = settings.protocol.train
        record = relabel(x, _teacher(settings), ReplayConfig(t.epochs, t.batch, t.augment, t.cutmix),
                         make_generator(derive_seed(settings.seed, "baseline", ipc, run, "relabel")),
                         real.info.allow_flip)
        return (x, y, y, record)
    return (x, _teacher(settings).label(x) if settings.protocol.labels == "static" else y, y)


def _teacher(settings: EvalSettings):
    if settings.teacher is None:
        raise CondenseError(f"Protocol {settings.protocol.name} needs teachers for its soft labels, and none were "
                            f"given (the CLI loads them with --teacher ARCH --teacher-epochs N).")
    return settings.teacher


def quick_evaluation(real: RealData, seed: int = 0):
    """`--eval-every`'s check: one ConvNet, the dsa protocol shortened to 300 epochs (labelled so);
    a function of a set returning its test accuracy."""
    quick = get_protocol("dsa").with_epochs(300)
    return lambda s: evaluate_set(s, real, EvalSettings(quick, [quick.arch], 1, seed, compile=True))[0].mean
