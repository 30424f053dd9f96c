"""The distillation driver: config, the outer loop, progress, checkpoints, resume, saving.

Algorithms do math only; everything with a side effect happens here. A run checkpoints to
`OUT.ckpt` every `ckpt_every` iterations and on Ctrl-C (atomic writes), and `resume` continues
from it so that an interrupted run ends with the same file as an uninterrupted one.
"""
from __future__ import annotations

import math
import pickle
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from condense import fast
from condense.errors import CondenseError, Interrupted
from condense.progress import Reporter
from condense.io import atomic_path, check_output, exclusive
from condense.synthetic import SyntheticSet

CKPT_VERSION = 1


def assets_dir() -> Path:
    """The packaged `assets/` folder (presets, protocols)."""
    return Path(str(resources.files("condense.assets")))


def preset_values(algo: str, preset: str | None, dataset: str, ipc: int) -> dict[str, Any]:
    """Settings from `assets/presets/<algo>.toml`, most specific last:
    [preset] < [preset.ipcN] < [preset.<dataset>] < [preset.<dataset>.ipcN]."""
    if preset is None:
        return {}
    path = assets_dir() / "presets" / f"{algo}.toml"
    table = tomllib.loads(path.read_text()) if path.is_file() else {}
    if preset not in table:
        have = ", ".join(sorted(table)) or "none"
        raise CondenseError(f"--algo {algo} has no preset '{preset}' (presets available: {have}). "
                            f"Drop --preset to use the method's defaults, or pick one of those.")

    def scalars(t: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in t.items() if not isinstance(v, dict)}

    p = table[preset]
    out = scalars(p)
    out.update(scalars(p.get(f"ipc{ipc}", {})))
    ds = p.get(dataset.partition(":")[0], {})  # imagefolder:PATH, imagenet:PATH: the kind
    out.update(scalars(ds))
    out.update(scalars(ds.get(f"ipc{ipc}", {})))
    return out


def preset_or_none(algo: str, preset: str | None, dataset: str, ipc: int) -> str | None:
    """The preset if the method has it, else None (selection baselines have no presets)."""
    if preset is None:
        return None
    try:
        preset_values(algo, preset, dataset, ipc)
        return preset
    except CondenseError:
        return None


@dataclass
class RunSpec:
    """One distillation run, as the CLI describes it."""

    algo: str
    dataset: str = "fashion-mnist"
    ipc: int = 10
    out: Path = Path("synth.h5")
    seed: int = 0
    preset: str | None = None
    iters: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    ckpt_every: int = 100
    resume: Path | None = None
    eval_every: int = 0
    zca: bool = False


def run_distill(algo, spec: RunSpec, reporter: Reporter | None = None,
                evaluate: Callable[[SyntheticSet], float] | None = None) -> SyntheticSet:
    """Run a constructed algorithm (see `algorithms.base.Algorithm`) and write `spec.out`.

    evaluate: optional quick evaluation run every `spec.eval_every` iterations (its accuracy is
    shown next to the progress bar). The `fast` execution setting holds for the whole run.
    """
    if spec.ckpt_every < 0 or spec.eval_every < 0:
        raise CondenseError(f"--ckpt-every and --eval-every must be 0 (never) or a positive number of iterations "
                            f"(got {spec.ckpt_every} and {spec.eval_every}).")
    check_output(spec.out, (spec.resume,) if spec.resume else ())
    with exclusive(spec.out, "writing"), fast.use(algo.ctx.execution.fast), _stop_between_iterations() as stop:
        return _run(algo, spec, reporter or Reporter(), evaluate, stop)


def _run(algo, spec: RunSpec, reporter: Reporter, evaluate: Callable[[SyntheticSet], float] | None,
         stop: "_StopFlag") -> SyntheticSet:
    cfg = algo.cfg
    ckpt_path = Path(str(spec.out) + ".ckpt")
    identity = {"algo": algo.name, "config": asdict(cfg), "dataset": algo.real.info.name, "seed": spec.seed,
                "pixel_space": algo.real.pre.pixel_space}

    start = 0
    if spec.resume is not None:
        start = _resume(algo, spec.resume, identity)
        reporter.log(f"resumed from {spec.resume} at iteration {start}")
    else:
        algo.init()

    saved = [start if spec.resume is not None else None]  # the iteration the checkpoint file holds

    def where() -> str:
        return (f"{ckpt_path} holds iteration {saved[0]}, the last finite state" if saved[0] is not None else
                "no checkpoint was written")

    def checkpoint(it: int, periodic: bool = True) -> None:
        """Write the state after iteration `it`; never a non-finite one. A periodic checkpoint that
        cannot be written (a full disk) warns and the run goes on; the previous file stays."""
        state = algo.state_dict()
        bad = _non_finite(state)
        if bad:
            raise CondenseError(f"The run diverged: {bad} is not finite after iteration {it} of {cfg.iters}; "
                                f"{where()}. Lower the learning rate and resume, or start again.")
        try:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"version": CKPT_VERSION, "identity": identity, "iteration": it, "state": state}, tmp)
            saved[0] = it
        except CondenseError as e:
            if not periodic:
                raise
            reporter.warn(f"{e} The run goes on from memory; {where()}.")

    t0 = time.time()
    bar = reporter.task(f"{algo.name} ipc {cfg.ipc}", cfg.iters) if cfg.iters else \
        nullcontext(lambda advance=1, **logs: None)
    with bar as update:
        update(advance=start)
        for it in range(start, cfg.iters):
            logs = algo.step(it)
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):  # one scalar read per iteration
                raise CondenseError(f"The run diverged: the loss is {float(loss)} at iteration {it + 1} of "
                                    f"{cfg.iters}; {where()}. Lower the learning rate and resume, or start again.")
            if spec.eval_every and (it + 1) % spec.eval_every == 0 and evaluate is not None:
                logs["acc"] = evaluate(algo.synthetic())
            update(**logs)
            if stop.requested and it + 1 < cfg.iters:  # Ctrl-C or SIGTERM: finish the iteration, save, leave
                checkpoint(it + 1, periodic=False)
                raise Interrupted(f"Interrupted after iteration {it + 1} of {cfg.iters}; the state is saved in "
                                  f"{ckpt_path}. Continue with the same command plus --resume.")
            if spec.ckpt_every and (it + 1) % spec.ckpt_every == 0 and it + 1 < cfg.iters:
                checkpoint(it + 1)
    synth = algo.synthetic()
    notes = algo.notes()
    for note in notes:
        reporter.warn(note)
    if notes:  # the file keeps them too
        synth.meta.config = {**synth.meta.config, "notes": notes}
    synth.meta.config = {**synth.meta.config, "seconds": round(time.time() - t0, 2), "preset": spec.preset}
    synth.save(spec.out)
    ckpt_path.unlink(missing_ok=True)
    return synth


class _StopFlag:
    requested = False


@contextmanager
def _stop_between_iterations() -> Iterator[_StopFlag]:
    """Turn the first Ctrl-C or SIGTERM (what batch schedulers send before preempting a job) into a
    request to stop at the end of the current iteration, so the checkpoint holds a whole number of
    iterations; a second one stops at once."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):  # noqa: ARG001
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        sys.stderr.write("\nstopping at the end of this iteration, with a checkpoint (again to stop at once)\n")

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _non_finite(state: Any, name: str = "state") -> str | None:
    """The first floating tensor in a (nested) state that holds NaN or infinity, by name."""
    if isinstance(state, torch.Tensor):
        return name if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for k, v in items:
        bad = _non_finite(v, f"{name}[{k!r}]")
        if bad:
            return bad
    return None


def _resume(algo, path: Path, identity: dict[str, Any]) -> int:
    if not path.is_file():
        raise CondenseError(f"--resume: no checkpoint at {path}. A run writes OUT.ckpt beside its output "
                            f"every --ckpt-every iterations; start without --resume to begin afresh.")
    try:
        # tensors, numbers, strings and containers only: nothing in a checkpoint is unpickled as code
        ck = torch.load(path, map_location="cpu", weights_only=True)  # generator states must stay on the CPU
    except pickle.UnpicklingError:
        raise CondenseError(f"--resume: {path} holds objects other than tensors, numbers and text, which condense "
                            f"does not unpickle (a checkpoint from elsewhere can run code when loaded). Use a "
                            f"checkpoint condense wrote, or start again without --resume.") from None
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same user problem)
        raise CondenseError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}). "
                            f"Delete it and start again without --resume.") from None
    if not isinstance(ck, dict) or ck.get("version") != CKPT_VERSION:
        raise CondenseError(f"--resume: {path} is not a condense checkpoint of this version.")
    theirs = ck["identity"]
    if theirs != identity:
        diff = [k for k in identity if theirs.get(k) != identity[k]]
        raise CondenseError(f"--resume: {path} belongs to a different run (it differs in: {', '.join(diff)}). "
                            f"Resume with the same algorithm, dataset, seed and settings, or start afresh.")
    algo.load_state_dict(ck["state"])
    return int(ck["iteration"])
