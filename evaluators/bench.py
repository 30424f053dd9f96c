"""`condense bench`: distill every method at every IPC (reusing sets already made), evaluate them and
the random baseline under one protocol, and write a report that lists the commands behind it.

Making a set is the caller's job (`make`): evaluators do not import algorithms; the CLI wires them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from condense.data import RealData
from condense.errors import CondenseError
from condense.io import atomic_path
from condense.progress import Reporter
from condense.run import preset_or_none
from condense.synthetic import load
from evaluators.evaluate import attach_teacher, evaluate_sets, run_cache, teacher_spec
from evaluators.plot import need_matplotlib
from evaluators.report import Report
from evaluators.retrain import EvalSettings


@dataclass
class BenchSet:
    """One distilled set of the suite: where it lives and the command that makes it."""

    algo: str
    ipc: int
    path: Path
    command: str
    preset: Optional[str] = None


def plan_sets(ipcs: str, dataset: str, preset: Optional[str], overrides: dict[str, str],
              settings: dict[str, dict], sets_dir: Path, tag: str, seed: int) -> list[BenchSet]:
    """Every method (the keys of `settings`) at every IPC of "1,10", with the preset where the method has
    it and `settings[algo]`: the --set `overrides` that are settings of that method."""
    for key in overrides:
        if not any(key in mine for mine in settings.values()):
            raise CondenseError(f"--set {key}: none of {', '.join(settings)} has this setting.")
    try:
        values = [int(v) for v in ipcs.split(",") if v.strip()]
    except ValueError:
        raise CondenseError(f"--ipc takes comma-separated integers, got '{ipcs}'.") from None
    out = []
    for k in values:
        for algo in settings:
            used = preset_or_none(algo, preset, dataset, k)
            path = set_path(sets_dir, dataset, algo, k, used, tag, seed)
            extra = "".join(f" --set {a}={b}" for a, b in settings.get(algo, {}).items())
            out.append(BenchSet(algo, k, path, f"condense distill --algo {algo} --ipc {k} --dataset {dataset}"
                                f"{' --preset ' + used if used else ''}{extra} --seed {seed} --out {path}", used))
    return out


def set_path(sets_dir: Path, dataset: str, algo: str, ipc: int, preset: Optional[str], tag: str, seed: int) -> Path:
    """`<dataset>-<algo>-ipc<k>-<preset or default>[-<tag>]-s<seed>.h5` under `sets_dir`."""
    name = f"{dataset.replace(':', '_')}-{algo}-ipc{ipc}-{preset or 'default'}{'-' + tag if tag else ''}-s{seed}.h5"
    return sets_dir / name


def run_bench(sets: list[BenchSet], make: Callable[[BenchSet], None], real: RealData, settings: EvalSettings,
              baseline: bool, out: Path, json_out: Optional[Path], plot: Optional[Path], reporter: Reporter,
              cache: Optional[Path] = None) -> Report:
    """Make the missing sets, evaluate all of them (and the random baseline), write `out` (Markdown
    with the equivalent commands), `json_out` and `plot` when given."""
    if plot:
        need_matplotlib()
    for s in sets:
        if not s.path.is_file():
            make(s)
    loaded = [(s.path, load(s.path)) for s in sets]
    attach_teacher(settings, real, teacher_spec(loaded, None, None, None), reporter, cache)
    settings.cache, settings.device, settings.stack = run_cache(cache), real.device.type, real.device.type == "cuda"
    report = evaluate_sets(loaded, real, settings, baseline, False, reporter)
    proto = settings.protocol
    name, _, modified = proto.name.partition("@")  # "dsa@300ep": the dsa protocol with --epochs 300
    eval_cmd = (f"condense eval {' '.join(str(s.path) for s in sets)} --protocol {name}"
                f"{' --epochs ' + str(proto.train.epochs) if modified else ''}"
                f"{' --arch ' + ','.join(settings.archs) if settings.archs != [proto.arch] else ''}"
                f" --runs {settings.runs}{' --baseline random' if baseline else ''}")
    text = (report.to_markdown() + "\n\nProduced by `condense bench`; equivalent commands:\n\n```\n"
            + "\n".join([s.command for s in sets] + [eval_cmd]) + "\n```\n")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    if json_out:
        report.save_json(json_out)
    if plot:
        report.plot(plot)
    return report
