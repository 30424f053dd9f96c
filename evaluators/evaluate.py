"""The `condense eval` job: settings checked before any training, every set and the random baseline
evaluated under one protocol, DD-Ranking's scores added. The CLI only parses into an `EvalRequest`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from condense.artifacts import Artifacts, cache_root
import condense.classes as classes
from condense.data import RealData, load_dataset
from condense.errors import CondenseError
from condense.models import MODELS
from condense.progress import Reporter
from condense.runtime import derive_seed, make_generator, resolve_device
from condense.synthetic import SyntheticSet, load
from evaluators.metrics import add_ars, add_scores
from evaluators.plot import need_matplotlib
from evaluators.protocols import get_protocol
from evaluators.report import Report, Row
from evaluators.retrain import EvalSettings, RunCache, evaluate_random, evaluate_set
from evaluators.softlabel import committee_teacher, load_teacher

Sets = list[tuple[Path, SyntheticSet]]


@dataclass
class EvalRequest:
    """What `condense eval` was asked for (the CLI's options, documented there)."""

    files: list[Path]
    protocol: Optional[str] = None  # None: the protocol the files name
    epochs: Optional[int] = None
    arch: Optional[str] = None
    runs: Optional[int] = None
    baseline: Optional[str] = None
    dataset: Optional[str] = None
    no_decode: bool = False
    compile: bool = True
    teacher: Optional[str] = None
    teacher_epochs: Optional[int] = None
    teacher_num: Optional[int] = None
    committee: Optional[str] = None
    fresh: bool = False
    stack: Optional[bool] = None
    select: str = "final"
    select_every: int = 0
    lr_grid: Optional[str] = None
    val_size: int = 500
    plot: Optional[Path] = None
    ars: bool = False
    full_acc: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    data_root: Optional[Path] = None
    kd_loss: Optional[str] = None  # None: the protocol's loss
    class_map: Optional[Path] = None  # JSON: the sets' classes -> the dataset's (condense.classes)


def make_settings(protocol: str, epochs: Optional[int], arch: Optional[str], runs: Optional[int], seed: int,
                  compile: bool, select: str = "final", select_every: int = 0,
                  lr_grid: Optional[str] = None, kd_loss: Optional[str] = None) -> EvalSettings:
    """Evaluation settings from the command line's words, every value checked."""
    if epochs is not None and epochs < 1:
        raise CondenseError(f"--epochs must be positive (got {epochs}).")
    proto = get_protocol(protocol).with_epochs(epochs).with_loss(kd_loss)
    archs = [a.strip() for a in (arch or proto.arch).split(",") if a.strip()]
    for a in archs:
        MODELS.get(a)
    n_runs = runs if runs is not None else proto.runs
    if n_runs < 1:
        raise CondenseError(f"--runs must be at least 1 (got {n_runs}).")
    try:
        grid = [float(v) for v in (lr_grid or "").split(",") if v.strip()]
    except ValueError:
        raise CondenseError(f"--lr-grid takes comma-separated numbers, e.g. 0.003,0.01,0.03 (got '{lr_grid}').") from None
    return EvalSettings(proto, archs, n_runs, seed, compile, select, select_every, None, grid)


def run_cache(root=None, read: bool = True) -> RunCache:
    """Where finished evaluation runs are kept: <artifact cache>/evals."""
    return RunCache(cache_root(root) / "evals", read)


def teacher_spec(sets: Sets, archs: Optional[str], epochs: Optional[int], num: Optional[int],
                 committee: Optional[str] = None) -> dict:
    """The teachers for soft labels: the command line's (--committee, or --teacher/--teacher-epochs/
    --teacher-num), else what the files name in their `teacher` attribute (JSON: {"committee": NAME} or
    {"arch": "convnet,...", "epochs": 15, "num": 1}), else one ConvNet-3 of 15 epochs."""
    if committee:
        return {"committee": committee}
    named = set()
    for p, s in sets:
        if s.meta.teacher:
            try:
                t = json.loads(s.meta.teacher)
                named.add(("committee", str(t["committee"]), json.dumps(t.get("weights")), bool(t.get("bssl", False)),
                           json.dumps(t.get("members"))) if "committee" in t else
                          (str(t["arch"]), int(t.get("epochs", 15)), int(t.get("num", 1))))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CondenseError(f"{p} names its teacher as {s.meta.teacher!r}, which is not the JSON "
                                    f'{{"committee": ...}} or {{"arch": ..., "epochs": ..., "num": ...}} condense '
                                    f"reads; pass --committee or --teacher, --teacher-epochs and --teacher-num.") from None
    if len(named) > 1 and archs is None:
        raise CondenseError(f"The files name different teachers ({sorted(named)}); evaluate them separately or "
                            f"choose one with --committee or --teacher/--teacher-epochs/--teacher-num.")
    file_spec = named.pop() if named else ("convnet", 15, 1)
    if file_spec[0] == "committee" and archs is None:  # as the file names it: members, weights, BSSL (CV-DD)
        return {"committee": file_spec[1], "weights": json.loads(file_spec[2]), "bssl": file_spec[3],
                "members": json.loads(file_spec[4])}
    if file_spec[0] == "committee":
        file_spec = ("convnet", 15, 1)
    return {"arch": archs or file_spec[0], "epochs": epochs if epochs is not None else file_spec[1],
            "num": num if num is not None else file_spec[2]}


def attach_teacher(settings: EvalSettings, real: RealData, spec: dict, reporter: Reporter, cache=None,
                   whole: RealData | None = None) -> None:
    """Soft-label protocols: load (or train and cache) the teachers into `settings`. A committee is
    loaded against the whole training split (`whole`; it holds out its own validation images)."""
    if settings.protocol.labels == "hard":
        return
    store = Artifacts(cache, reporter, real.device, compile=settings.compile)  # --no-compile reaches the teachers too
    if "committee" in spec:
        settings.teacher = committee_teacher(store, whole or real, spec["committee"], spec.get("weights"),
                                             bool(spec.get("bssl", False)), spec.get("members"))
    else:
        archs = [a.strip() for a in spec["arch"].split(",") if a.strip()]
        settings.teacher = load_teacher(store, real, archs, spec["epochs"], spec["num"])


def check_sets(sets: Sets, settings: EvalSettings, reporter: Reporter) -> None:
    """Every refusal before any training (teachers can take many minutes), and notes on what the
    protocol will do with each file."""
    proto = settings.protocol
    for p, s in sets:
        if s.soft_labels is not None and proto.labels == "hard":
            reporter.log(f"note: {p} stores soft labels, but protocol {proto.name} trains on its hard labels, so "
                         f"the number below ignores them (--protocol kd-static uses them).")
        if proto.labels == "replay":
            if s.replay is None:
                raise CondenseError(f"{p} has no replayable labels, which protocol {proto.name} trains on. Evaluate "
                                    f"it under mode M (--protocol kd-sre2l: the teachers label every batch online).")
            s.replay.check_matches(proto.train, str(p))
        if proto.labels != "hard" and s.preprocess.pixel_space == "zca":
            raise CondenseError(f"{p} is stored in ZCA space; the soft-label protocols need teachers in that space, "
                                f"which condense does not build yet. Evaluate it with a hard-label protocol.")
        if settings.val is not None and s.preprocess.pixel_space == "zca":
            raise CondenseError("--select val with ZCA-whitened sets is not supported yet; use final.")
        if proto.labels == "static" and s.soft_labels is not None:
            kind, temp = s.soft_attrs.get("kind", "logits"), s.soft_attrs.get("temperature")
            if kind == "probs" and proto.train.temperature != 1:
                raise CondenseError(f"{p} stores soft labels as probabilities, which cannot be re-softened at the "
                                    f"protocol's temperature {proto.train.temperature:g}. Store logits, or evaluate "
                                    f"with a hard-label protocol.")
            if temp is not None and float(temp) != proto.train.temperature:
                reporter.log(f"note: {p}'s soft labels were made at temperature {float(temp):g}; protocol "
                             f"{proto.name} softens them at {proto.train.temperature:g}, and labels the random "
                             f"baseline with condense's teachers instead.")


def targets_of(s: SyntheticSet, settings: EvalSettings) -> str:
    """What a set's runs train towards under the protocol (the report's `targets`): evaluate_set's rule."""
    if settings.protocol.labels == "hard":
        return "hard labels"
    if settings.protocol.labels == "static" and s.soft_labels is not None:
        return f"the file's soft labels ({s.soft_attrs.get('kind', 'logits')})"
    if settings.protocol.labels == "replay":
        return "the file's replayed labels (side file)"
    return "teacher online (mode M)" if settings.protocol.labels == "teacher" else "teacher"


def evaluate_sets(sets: Sets, real: RealData, settings: EvalSettings, baseline: bool, no_decode: bool,
                  reporter: Reporter) -> Report:
    """Evaluate (path, SyntheticSet) pairs and, if asked, the random baseline of each IPC."""
    report = Report(settings.protocol, real.info.name, settings.seed)
    for path, s in sets:
        res = evaluate_set(s, real, settings, reporter, label=Path(path).name)
        method = (s.meta.algorithm or "?") + (" (stored, no decode)" if no_decode and s.compact_attrs else "")
        report.rows.append(Row(method, s.meta.ipc, str(path), res, settings.select,
                               extra={"train_images": len(s), "stored_images": s.stored_images(), "storage": s.storage(),
                                      "compiled": settings.compile, "stacked": settings.stack,
                                      "labels": settings.protocol.labels, "targets": targets_of(s, settings),
                                      **({"teacher": settings.teacher.description} if settings.teacher else {})}))
    if baseline:
        done = set()
        for _, s in sets:
            key = (s.meta.ipc, s.meta.pixel_space)
            if key not in done:
                done.add(key)
                res = evaluate_random(real.with_preprocess(s.preprocess), s.meta.ipc, settings, reporter)
                report.rows.append(Row("random (real subset)", s.meta.ipc, "baseline", res, settings.select))
    return report


def evaluate_files(req: EvalRequest, reporter: Reporter) -> Report:
    """`condense eval`: check everything, load the sets and the data, evaluate, add the scores. Without
    --protocol, the protocol the files name (what their method is meant to be evaluated with)."""
    if req.baseline not in (None, "random"):
        raise CondenseError(f"--baseline '{req.baseline}' is not known; the baseline is 'random'.")
    if req.select == "val" and req.val_size < 1:
        raise CondenseError(f"--val-size must be at least 1 image per class (got {req.val_size}).")
    for flag, value in (("--teacher-epochs", req.teacher_epochs), ("--teacher-num", req.teacher_num)):
        if value is not None and value < 1:
            raise CondenseError(f"{flag} must be at least 1 (got {value}).")
    if req.plot:
        need_matplotlib()
    if (req.ars or req.full_acc is not None) and req.baseline != "random":
        raise CondenseError(f"{'--ars' if req.ars else '--full-acc'} needs --baseline random (the scores compare the "
                            f"set with a random real subset of the same IPC).")
    sets: Sets = [(p, load(p)) for p in req.files]
    protocols = {s.meta.protocol or "dsa" for _, s in sets}
    if req.protocol is None and len(protocols) > 1:
        raise CondenseError(f"The files are meant for different protocols ({', '.join(sorted(protocols))}); choose "
                            f"one with --protocol, or evaluate them separately.")
    settings = make_settings(req.protocol or protocols.pop(), req.epochs, req.arch, req.runs, req.seed, req.compile,
                             req.select, req.select_every, req.lr_grid, req.kd_loss)
    settings.cache = run_cache(read=not req.fresh)
    if req.full_acc is not None and settings.protocol.labels != "hard":
        raise CondenseError(f"--full-acc adds HLR, which compares hard-label accuracies, but protocol "
                            f"{settings.protocol.name} uses soft labels. Compute HLR/LRS with a hard-label protocol "
                            f"(e.g. dsa); under this protocol, IOR is the gap to the table's random row.")
    if req.no_decode:
        sets = [(p, s.stored_set()) for p, s in sets]
    names = {req.dataset or s.meta.dataset for _, s in sets}
    if len(names) > 1:
        raise CondenseError(f"The files come from different datasets ({', '.join(sorted(names))}); evaluate one "
                            f"dataset at a time.")
    dev = resolve_device(req.device)
    real = whole = load_dataset(names.pop(), req.data_root, device=dev)
    if req.class_map is not None:
        sets = [(p, classes.remap(s, classes.read_class_map(req.class_map, s.meta, real.info), real.info))
                for p, s in sets]
    for p, s in sets:  # before any training: a set whose labels mean other classes is refused now
        classes.check(s.meta, real.info, str(p))
    if req.select == "val":
        real, settings.val = real.holdout(req.val_size, make_generator(derive_seed(req.seed, "validation-split")))
    settings.device = dev.type
    settings.stack = (dev.type == "cuda") if req.stack is None else req.stack  # measured slower on CPU (RESULTS.md)
    check_sets(sets, settings, reporter)
    if settings.protocol.labels != "hard" and (settings.protocol.labels != "replay" or req.baseline == "random"):
        spec = teacher_spec(sets, req.teacher, req.teacher_epochs, req.teacher_num, req.committee)
        attach_teacher(settings, real, spec, reporter, whole=whole)
    p = settings.protocol
    reporter.log(f"protocol {p.name} [{p.hash}]: {p.description}")
    report = evaluate_sets(sets, real, settings, req.baseline == "random", req.no_decode, reporter)
    if req.full_acc is not None:
        add_scores(report, req.full_acc / 100 if req.full_acc > 1 else req.full_acc)
    if req.ars:
        plain = replace(settings, protocol=settings.protocol.without_augmentation())
        add_ars(report, evaluate_sets(sets, real, plain, True, req.no_decode, reporter))
    return report
