"""The `condense` command line (typer): distill, eval, teachers, show, info, export.

This is the application shell: the one core module that imports `algorithms` and `evaluators`
(to fill the registries and wire commands). Exit codes: 0 success, 1 user error (a one-paragraph
message, no traceback), 2 internal error (a bug: the traceback is printed), 130 interrupted.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from condense.errors import CondenseError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Dataset distillation: condense a labelled image dataset into a few synthetic images "
                       "per class, and evaluate the result the same way every time.")

Device = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
Seed = typer.Option(0, "--seed", help="Seed of every random stream of the run.")
DataRoot = typer.Option(None, "--data-root", help="Folder with the dataset files (searched first).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _reporter(quiet: bool):
    from condense.progress import RichReporter

    return RichReporter(quiet)


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CondenseError(f"--set expects key=value, got '{item}' (e.g. --set lr_img=100).")
        out[key.strip()] = value.strip()
    return out


@app.command()
def distill(
    algo: str = typer.Option(..., "--algo", help="Method: random, herding, kcenter, ..."),
    ipc: int = typer.Option(10, "--ipc", help="Synthetic images per class."),
    dataset: str = typer.Option("fashion-mnist", "--dataset", help="fashion-mnist, mnist, cifar10, cifar100, svhn, "
                                "tiny-imagenet, imagefolder:PATH[@SIZE]."),
    out: Path = typer.Option(Path("synth.h5"), "--out", "-o", help="Output file (written atomically)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Outer iterations (default: preset / method)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named settings from assets/presets (cpu, paper)."),
    set_: List[str] = typer.Option([], "--set", help="Override one method setting: --set key=value (repeatable)."),
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="Checkpoint to OUT.ckpt every K iterations."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.ckpt."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint file."),
    eval_every: int = typer.Option(0, "--eval-every", help="Quick evaluation (1 ConvNet, 300 epochs) every K its."),
    zca: bool = typer.Option(False, "--zca", help="ZCA-whiten the data (kornia, eps 0.1)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download a missing dataset."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Artifact cache (default $CONDENSE_CACHE or "
                                         "~/.cache/condense/artifacts)."),
    seed: int = Seed, device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Distill a synthetic set and write it to OUT (synth.h5)."""
    from condense.data import load_dataset
    from condense.runtime import resolve_device

    dev = resolve_device(device)
    real = load_dataset(dataset, data_root, download, zca=zca, device=dev)
    _distill_one(algo, ipc, real, out, preset, _parse_sets(set_), iters, seed, cache, _reporter(quiet), ckpt_every,
                 resume_from or (Path(str(out) + ".ckpt") if resume else None), eval_every)


def _distill_one(algo: str, ipc: int, real, out: Path, preset: Optional[str], overrides: dict, iters: Optional[int],
                 seed: int, cache: Optional[Path], reporter, ckpt_every: int = 100, resume: Optional[Path] = None,
                 eval_every: int = 0):
    """Build the configured algorithm and run it through the driver (shared by distill and bench)."""
    import algorithms
    from algorithms.base import Context, config_from
    from condense import runtime
    from condense.artifacts import Artifacts
    from condense.run import RunSpec, preset_values, run_distill

    if ipc < 1:
        raise CondenseError(f"--ipc must be a positive number of images per class (got {ipc}).")
    cls = algorithms.ALGORITHMS.get(algo)
    dev = real.device
    spec = RunSpec(cls.name, real.info.name, ipc, out, seed, preset, iters, overrides, ckpt_every, resume, eval_every,
                   real.pre.pixel_space == "zca")
    values = {**preset_values(cls.name, preset, real.info.name, ipc), **overrides, "ipc": ipc}
    if iters is not None:
        values["iters"] = iters
    cfg = config_from(cls, values)
    ctx = Context(dev, seed, Artifacts(cache, reporter, dev, compile=True))
    algorithm = cls(cfg, real, ctx)
    if algorithm.wants_huge_pages():
        runtime.restart_with_huge_pages(reporter.log)
    evaluate = None
    if eval_every:
        from evaluators.protocols import get_protocol
        from evaluators.retrain import EvalSettings, evaluate_set

        quick = get_protocol("dsa").with_epochs(300)
        settings = EvalSettings(quick, [quick.arch], 1, seed, compile=True)
        evaluate = lambda s: evaluate_set(s, real, settings)[0].mean  # noqa: E731
    t0 = time.time()
    synth = run_distill(algorithm, spec, reporter, evaluate)
    reporter.log(f"wrote {out}: {len(synth)} images ({synth.meta.ipc} per class, {synth.meta.dataset}, "
                 f"{algorithm.name}) in {time.time() - t0:.1f}s")
    return synth


@app.command("eval")
def eval_(
    files: List[Path] = typer.Argument(..., help="Synthetic sets (synth.h5) to evaluate."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Comma-separated architectures (default: the "
                                       "protocol's, convnet)."),
    runs: Optional[int] = typer.Option(None, "--runs", help="Networks trained per architecture (default 5)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the protocol's epochs (labelled)."),
    protocol: str = typer.Option("dsa", "--protocol", help="Named evaluation protocol (assets/protocols)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="'random': add a random real subset of the "
                                           "same IPC under the same protocol."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as Markdown."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset to test on (default: the file's)."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Train on the stored (compact) images instead of "
                                   "the decoded set, to compare equal image counts."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the networks' forward "
                                 "(same math, about 2x faster on CPU; results differ from eager only by float "
                                 "rounding)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Soft-label protocols (kd-static, kd-sre2l): the "
                                          "teacher architectures, comma-separated (their mean logits are the "
                                          "labels). Default: the file's `teacher` attribute, else convnet."),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="Epochs of the teachers' training on "
                                                 "the whole training split (cached; `condense teachers` builds them "
                                                 "ahead). Default: the file's, else 15."),
    teacher_num: Optional[int] = typer.Option(None, "--teacher-num", help="Teachers per architecture (seeds "
                                              "0..N-1). Default: the file's, else 1."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain every run even if the run cache has it (finished "
                               "runs are cached, so an interrupted evaluation, run again, continues; fresh "
                               "results replace the cached ones)."),
    stack: Optional[bool] = typer.Option(None, "--stack/--no-stack", help="Train the runs of a ConvNet together "
                                         "as one grouped network (each run computes what it would alone; fewer, "
                                         "larger passes). Default: on CUDA only (on CPU it measured 1.24x slower)."),
    select: str = typer.Option("final", "--select", help="final: last epoch (default); val: the epoch chosen on a "
                               "held-out split of the real training set; test-best: the legacy best test "
                               "accuracy over checkpoints (optimistic; labelled)."),
    select_every: int = typer.Option(0, "--select-every", help="Checkpoint interval for val/test-best (default: "
                                     "a tenth of the epochs)."),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="With --select val: comma-separated learning "
                                          "rates; every run is trained at each and the lr with the best mean "
                                          "validation accuracy is reported (costs one evaluation per lr)."),
    val_size: int = typer.Option(500, "--val-size", help="Validation images held out per class for --select val."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw accuracy vs IPC per method as a PNG (needs "
                                        "matplotlib: pip install condense-dd with the plot extra)."),
    ars: bool = typer.Option(False, "--ars", help="With --baseline random: also evaluate everything without "
                             "augmentation and add DD-Ranking's ARS (doubles the cost)."),
    full_acc: Optional[float] = typer.Option(None, "--full-acc", help="Test accuracy (%) of the architecture trained "
                                             "on the whole training set (condense teachers); with --baseline "
                                             "random it adds DD-Ranking's HLR, IOR and LRS to the JSON and table."),
    seed: int = Seed, device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Retrain fresh networks on synthetic sets and report test accuracy per IPC and architecture."""
    from condense.data import load_dataset
    from condense.runtime import resolve_device
    from condense.synthetic import load

    settings = _settings(protocol, epochs, arch, runs, seed, compile, select, select_every, None, lr_grid)
    settings.cache = _run_cache(read=not fresh)
    if baseline not in (None, "random"):
        raise CondenseError(f"--baseline '{baseline}' is not known; the baseline is 'random'.")
    if plot:
        _need_matplotlib()
    if (ars or full_acc is not None) and baseline != "random":
        raise CondenseError(f"{'--ars' if ars else '--full-acc'} needs --baseline random (the scores compare the "
                            f"set with a random real subset of the same IPC).")
    if full_acc is not None and settings.protocol.labels != "hard":
        raise CondenseError(f"--full-acc adds HLR, which compares hard-label accuracies, but protocol "
                            f"{settings.protocol.name} uses soft labels. Compute HLR/LRS with a hard-label protocol "
                            f"(e.g. dsa); under this protocol, IOR is the gap to the table's random row.")
    sets = [(p, load(p)) for p in files]
    if no_decode:
        sets = [(p, s.stored_set()) for p, s in sets]
    names = {dataset or s.meta.dataset for _, s in sets}
    if len(names) > 1:
        raise CondenseError(f"The files come from different datasets ({', '.join(sorted(names))}); evaluate one "
                            f"dataset at a time.")
    dev = resolve_device(device)
    reporter = _reporter(quiet)
    real = load_dataset(names.pop(), data_root, device=dev)
    val = None
    if select == "val":
        from condense.runtime import derive_seed, make_generator

        real, val = real.holdout(val_size, make_generator(derive_seed(seed, "validation-split")))
        settings.val = val
    proto = settings.protocol
    settings.device = dev.type
    settings.stack = (dev.type == "cuda") if stack is None else stack  # measured slower on CPU (RESULTS §5)
    for p, s in sets:  # every refusal before any training (teachers can take many minutes)
        if s.soft_labels is not None and proto.labels == "hard":
            reporter.log(f"note: {p} stores soft labels, but protocol {proto.name} trains on its hard labels, so "
                         f"the number below ignores them (--protocol kd-static uses them).")
        if proto.labels != "hard" and s.preprocess.pixel_space == "zca":
            raise CondenseError(f"{p} is stored in ZCA space; the soft-label protocols need teachers in that space, "
                                f"which condense does not build yet. Evaluate it with a hard-label protocol.")
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
    spec = _teacher_spec(sets, teacher, teacher_epochs, teacher_num) if proto.labels != "hard" else ("", 0, 0)
    _attach_teacher(settings, real, *spec, dev, reporter)
    if not quiet:
        from rich.markup import escape

        _console().print(f"protocol [bold]{escape(proto.name)}[/] {escape(f'[{proto.hash}]')}: "
                         f"{escape(proto.description)}")
    report = _evaluate(sets, real, settings, baseline == "random", no_decode, reporter)
    if full_acc is not None:
        add_scores(report, full_acc / 100 if full_acc > 1 else full_acc)
    if ars:
        from dataclasses import replace as _replace

        plain = _replace(settings, protocol=settings.protocol.without_augmentation())
        add_ars(report, _evaluate(sets, real, plain, True, no_decode, reporter))
    from rich.console import Console

    report.print(Console())
    if json_out:
        report.save_json(json_out)
    if markdown:
        from condense.synthetic import atomic_path

        with atomic_path(Path(markdown)) as tmp:
            tmp.write_text(report.to_markdown())
    if plot:
        plot_report(report, plot)


def _targets_of(s, settings) -> str:
    """What a set's runs train towards under the protocol (the report's `targets`): evaluate_set's rule."""
    if settings.protocol.labels == "hard":
        return "hard labels"
    if settings.protocol.labels == "static" and s.soft_labels is not None:
        return f"the file's soft labels ({s.soft_attrs.get('kind', 'logits')})"
    return "teacher"


def _evaluate(sets: list, real, settings, baseline: bool, no_decode: bool, reporter):
    """Evaluate (path, SyntheticSet) pairs and, if asked, the random baseline of each IPC: a Report."""
    from evaluators.report import Report, Row
    from evaluators.retrain import evaluate_random, evaluate_set

    report = Report(settings.protocol, real.info.name, settings.seed)
    for path, s in sets:
        if settings.val is not None and s.preprocess.pixel_space == "zca":
            raise CondenseError("--select val with ZCA-whitened sets is not supported yet; use final.")
        res = evaluate_set(s, real, settings, reporter, label=Path(path).name)
        method = (s.meta.algorithm or "?") + (" (stored, no decode)" if no_decode and s.compact_attrs else "")
        report.rows.append(Row(method, s.meta.ipc, str(path), res, settings.select,
                               extra={"train_images": len(s), "stored_images": s.stored_images(),
                                      "compiled": settings.compile, "stacked": settings.stack,
                                      "labels": settings.protocol.labels, "targets": _targets_of(s, settings),
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


@app.command()
def bench(
    dataset: str = typer.Option("fashion-mnist", "--dataset"),
    algos: str = typer.Option("random,dm,datadam,ncfm", "--algos", help="Comma-separated methods."),
    ipc: str = typer.Option("1,10", "--ipc", help="Comma-separated IPCs."),
    preset: Optional[str] = typer.Option("cpu", "--preset", help="Preset of every method that has it."),
    protocol: str = typer.Option("dsa", "--protocol"),
    runs: Optional[int] = typer.Option(None, "--runs"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    sets_dir: Path = typer.Option(Path("bench-sets"), "--sets-dir", help="Where the distilled sets are kept and "
                                  "reused (an interrupted distillation resumes)."),
    out: Path = typer.Option(Path("bench.md"), "--out", help="Markdown report (with the commands behind it)."),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Accuracy vs IPC per method as a PNG (needs "
                                        "matplotlib: the plot extra of condense-dd)."),
    cache: Optional[Path] = typer.Option(None, "--cache"),
    seed: int = Seed, device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """The whole suite in one command: distill every method at every IPC (reusing sets already made),
    evaluate them and the random baseline under one protocol, write a report (and plot)."""
    import algorithms
    from condense.data import load_dataset
    from condense.runtime import resolve_device
    from condense.synthetic import atomic_path, load

    if plot:
        _need_matplotlib()
    names = [a.strip() for a in algos.split(",") if a.strip()]
    for a in names:
        algorithms.ALGORITHMS.get(a)
    try:
        ipcs = [int(v) for v in ipc.split(",") if v.strip()]
    except ValueError:
        raise CondenseError(f"--ipc takes comma-separated integers, got '{ipc}'.") from None
    dev = resolve_device(device)
    reporter = _reporter(quiet)
    real = load_dataset(dataset, data_root, device=dev)
    commands, sets = [], []
    for k in ipcs:
        for a in names:
            path = sets_dir / f"{real.info.name.replace(':', '_')}-{a}-ipc{k}-{preset or 'default'}-s{seed}.h5"
            used = _preset_or_none(a, preset, real.info.name, k)
            commands.append(f"condense distill --algo {a} --ipc {k} --dataset {real.info.name}"
                            f"{' --preset ' + used if used else ''} --seed {seed} --out {path}")
            if not path.is_file():
                ckpt = Path(str(path) + ".ckpt")
                _distill_one(a, k, real, path, used, {}, None, seed, cache, reporter,
                             resume=ckpt if ckpt.is_file() else None)
            sets.append((path, load(path)))
    settings = _settings(protocol, epochs, None, runs, seed, True, "final", 0, None)
    _attach_teacher(settings, real, "convnet", 15, 1, dev, reporter, cache)
    settings.cache, settings.device, settings.stack = _run_cache(cache), dev.type, dev.type == "cuda"
    report = _evaluate(sets, real, settings, True, False, reporter)
    from rich.console import Console

    report.print(Console())
    eval_cmd = f"condense eval {' '.join(str(p) for p, _ in sets)} --protocol {protocol} --baseline random"
    text = (report.to_markdown() + "\n\nProduced by `condense bench`; equivalent commands:\n\n```\n"
            + "\n".join(commands + [eval_cmd]) + "\n```\n")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    if json_out:
        report.save_json(json_out)
    if plot:
        plot_report(report, plot)


def _preset_or_none(algo: str, preset: Optional[str], dataset: str, ipc: int) -> Optional[str]:
    """The preset if the method has it, else None (selection baselines have no presets)."""
    from condense.run import preset_values

    if preset is None:
        return None
    try:
        preset_values(algo, preset, dataset, ipc)
        return preset
    except CondenseError:
        return None


def _run_cache(root=None, read: bool = True):
    """Where finished evaluation runs are kept: <artifact cache>/evals."""
    from condense.artifacts import cache_root
    from evaluators.retrain import RunCache

    return RunCache(cache_root(root) / "evals", read)


def _need_matplotlib() -> None:
    """Fail before hours of work, not after, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CondenseError("--plot needs matplotlib (the plot extra of condense-dd: pip install matplotlib), or drop --plot.") from None


def plot_report(report, path: Path) -> None:
    """Accuracy (mean ± std) against IPC, one line per method and architecture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CondenseError("--plot needs matplotlib (the plot extra of condense-dd: pip install matplotlib).") from None
    from condense.synthetic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({r.method for r in report.rows})
    for m in methods:
        for arch in report.archs:
            pts = sorted((r.ipc, a.mean, a.std) for r in report.rows if r.method == m for a in r.results
                         if a.arch == arch)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, [100 * y for y in ys], [100 * e for e in es], marker="o", capsize=3,
                            label=m if len(report.archs) == 1 else f"{m} ({arch})")
    ax.set_xscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report.dataset}, protocol {report.protocol.name}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _teacher_spec(sets: list, archs: Optional[str], epochs: Optional[int], num: Optional[int]) -> tuple[str, int, int]:
    """The teachers for soft labels: the command line's, else the one the files name in their `teacher`
    attribute (JSON: {"arch": "convnet,...", "epochs": 15, "num": 1}), else one ConvNet-3 of 15 epochs."""
    named = set()
    for p, s in sets:
        if s.meta.teacher:
            try:
                t = json.loads(s.meta.teacher)
                named.add((str(t["arch"]), int(t.get("epochs", 15)), int(t.get("num", 1))))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CondenseError(f"{p} names its teacher as {s.meta.teacher!r}, which is not the JSON "
                                    f'{{"arch": ..., "epochs": ..., "num": ...}} condense reads; pass --teacher, '
                                    f"--teacher-epochs and --teacher-num instead.") from None
    if len(named) > 1 and archs is None:
        raise CondenseError(f"The files name different teachers ({sorted(named)}); evaluate them separately or "
                            f"choose one with --teacher/--teacher-epochs/--teacher-num.")
    file_arch, file_epochs, file_num = named.pop() if named else ("convnet", 15, 1)
    return (archs or file_arch, epochs if epochs is not None else file_epochs, num if num is not None else file_num)


def _attach_teacher(settings, real, archs: str, epochs: int, num: int, dev, reporter, cache=None) -> None:
    """Soft-label protocols: load (or train and cache) the teachers into `settings`."""
    if settings.protocol.labels == "hard":
        return
    from condense.artifacts import Artifacts
    from evaluators.softlabel import load_teacher

    store = Artifacts(cache, reporter, dev, compile=settings.compile)  # --no-compile reaches the teachers too
    settings.teacher = load_teacher(store, real, [a.strip() for a in archs.split(",") if a.strip()], epochs, num)


def _settings(protocol: str, epochs: Optional[int], arch: Optional[str], runs: Optional[int], seed: int,
              compile: bool, select: str, select_every: int, val, lr_grid: Optional[str] = None):
    from condense.models import MODELS
    from evaluators.protocols import get_protocol
    from evaluators.retrain import EvalSettings

    if epochs is not None and epochs < 1:
        raise CondenseError(f"--epochs must be positive (got {epochs}).")
    proto = get_protocol(protocol).with_epochs(epochs)
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
    return EvalSettings(proto, archs, n_runs, seed, compile, select, select_every, val, grid)


def add_ars(report, plain) -> None:
    """DD-Ranking's ARS per row and architecture, from `report` (the protocol) and `plain` (the same
    evaluations without augmentation): squash of the mean of the two set-minus-random gaps."""
    from evaluators.metrics import ars

    def gaps(rep):
        base = {r.ipc: {a.arch: a.mean for a in r.results} for r in rep.rows if r.source == "baseline"}
        return {(r.source, r.ipc, a.arch): a.mean - base[r.ipc][a.arch]
                for r in rep.rows if r.source != "baseline" for a in r.results}

    with_aug, without = gaps(report), gaps(plain)
    plain_acc = {(r.source, r.ipc, a.arch): a.mean for r in plain.rows for a in r.results}
    for row in report.rows:
        for a in row.results:
            key = (row.source, row.ipc, a.arch)
            entry = row.extra.setdefault("scores", {}).setdefault(a.arch, {})
            entry["acc_without_augmentation"] = plain_acc[key]
            if key in with_aug:
                entry["ARS"] = ars(with_aug[key], without[key])


def add_scores(report, full: float) -> None:
    """HLR / IOR / LRS (fractions) for every row that has a random baseline of its IPC."""
    from evaluators.metrics import hlr, ior, lrs

    base = {r.ipc: {a.arch: a.mean for a in r.results} for r in report.rows if r.source == "baseline"}
    if not base:
        raise CondenseError("--full-acc needs --baseline random (IOR compares with the random subset).")
    if report.protocol.labels != "hard":
        raise CondenseError(f"HLR compares hard-label accuracies, but protocol {report.protocol.name} uses soft "
                            f"labels. Compute HLR/LRS with a hard-label protocol (e.g. dsa); IOR under this "
                            f"protocol is the gap to the random row of the table.")
    for row in report.rows:
        scores = {}
        for a in row.results:
            h = hlr(full, a.mean)
            i = ior(a.mean, base.get(row.ipc, {}).get(a.arch, float("nan")))
            scores[a.arch] = {"HLR": h, "IOR": i, "LRS": lrs(i, h)} if i == i else {"HLR": h}
        row.extra["scores"] = scores


@app.command()
def teachers(
    dataset: str = typer.Option("fashion-mnist", "--dataset"),
    arch: str = typer.Option("convnet", "--arch", help="Comma-separated architectures."),
    epochs: int = typer.Option(15, "--epochs", help="Training epochs over the whole real training split (15: the "
                               "soft-label protocols' default teacher)."),
    num: int = typer.Option(1, "--num", help="Networks per architecture (seeds 0..num-1)."),
    lr: float = typer.Option(0.01, "--lr"),
    augment: str = typer.Option("none", "--augment", help="DSA strategy used while training, or none."),
    pool: Optional[str] = typer.Option(None, "--pool", help="Build what a method needs instead (e.g. ncfm: its "
                                       "feature-extractor pool), with its --preset / --set settings."),
    preset: Optional[str] = typer.Option(None, "--preset", help="With --pool: the method's preset."),
    ipc: int = typer.Option(10, "--ipc", help="With --pool: the IPC whose preset applies."),
    set_: List[str] = typer.Option([], "--set", help="With --pool: override a method setting."),
    zca: bool = typer.Option(False, "--zca"),
    cache: Optional[Path] = typer.Option(None, "--cache"),
    device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Train (or load from the cache) networks on the whole real training split; print test accuracy."""
    from rich.console import Console
    from rich.table import Table

    from condense.artifacts import Artifacts, teacher_recipe
    from condense.data import load_dataset
    from condense.runtime import resolve_device

    dev = resolve_device(device)
    reporter = _reporter(quiet)
    real = load_dataset(dataset, data_root, zca=zca, device=dev)
    store = Artifacts(cache, reporter, dev, compile=True)
    if pool is not None:
        import algorithms
        from algorithms.base import config_from
        from condense.run import preset_values

        cls = algorithms.ALGORITHMS.get(pool)
        values = {**preset_values(cls.name, preset, real.info.name, ipc), **_parse_sets(set_), "ipc": ipc}
        jobs = cls.artifacts_needed(config_from(cls, values))
        if not jobs:
            raise CondenseError(f"{cls.name} needs no pretrained networks; nothing to build.")
        title = f"{real.info.name}: networks for {cls.name} ({len(jobs)})"
    else:
        recipe = teacher_recipe(epochs, lr, augment)
        jobs = [(a.strip(), recipe, s) for a in arch.split(",") if a.strip() for s in range(num)]
        title = (f"{real.info.name}: networks trained on the whole training split ({epochs} epochs, SGD {lr}, "
                 f"cosine, augment {augment})")
    table = Table(title=title, title_justify="left")
    for col in ("arch", "seed", "epochs", "test acc (%)", "train time (s)", "file"):
        table.add_column(col)
    for a, recipe, s in jobs:
        rec = store.trained_record(real, a, recipe, seed=s)
        m = rec["meta"]
        table.add_row(a, str(s), str(recipe.epochs), f"{100 * m['test_accuracy']:.2f}", f"{m['seconds']:.0f}",
                      store.path(store.describe(real, a, recipe, s)).name)
    Console().print(table)


@app.command()
def experts(
    dataset: str = typer.Option("fashion-mnist", "--dataset"),
    arch: str = typer.Option("convnet", "--arch"),
    num: int = typer.Option(5, "--num", help="Number of expert trajectories."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs per expert: the largest start epoch trajectory "
                               "matching uses plus its expert epochs (MTT needs no more)."),
    recipe: str = typer.Option("mtt", "--recipe", help="mtt (plain SGD, as MTT) or smooth (AST's smooth experts)."),
    zca: bool = typer.Option(False, "--zca", help="Train in ZCA-whitened space (distill with --zca too)."),
    cache: Optional[Path] = typer.Option(None, "--cache"),
    device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Train (or load from the cache) expert trajectories for trajectory matching."""
    from rich.console import Console

    from algorithms.mtt import expert_recipe
    from condense.artifacts import Artifacts
    from condense.data import load_dataset
    from condense.runtime import resolve_device

    if num < 1 or epochs < 1:
        raise CondenseError("--num and --epochs must be at least 1.")
    dev = resolve_device(device)
    real = load_dataset(dataset, data_root, zca=zca, device=dev)
    store = Artifacts(cache, _reporter(quiet), dev, compile=True)
    rec = expert_recipe(recipe, epochs)
    t0 = time.time()
    for i in range(num):
        store.expert(real, arch, rec, i)
    folder = store.expert_path(real, arch, rec, 0).parent
    size = sum(p.stat().st_size for p in folder.glob("*.h5"))
    Console().print(f"{num} {recipe} experts of {arch} on {real.info.name} ({epochs} epochs each) in {folder} "
                    f"({size / 2**20:.1f} MB; {time.time() - t0:.0f}s this run)")


@app.command()
def show(
    file: Path = typer.Argument(..., help="A synth.h5 file."),
    out: Path = typer.Option(Path("grid.png"), "--out", "-o", help="PNG to write."),
    per_class: int = typer.Option(10, "--per-class", help="Images per class row."),
    upscale: int = typer.Option(2, "--upscale", help="Nearest-neighbour enlargement factor."),
    stored: bool = typer.Option(False, "--stored", help="Show the stored (compact) images, not the decoded ones."),
) -> None:
    """Save a per-class image grid (pixel space, ZCA inverted) as a PNG."""
    from condense.synthetic import load, save_grid

    s = load(file)
    save_grid(s.stored_set() if stored else s, out, per_class, upscale)
    _console().print(f"wrote {out}")


@app.command()
def info(file: Path = typer.Argument(..., help="A synth.h5 file."),
         as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON.")) -> None:
    """Print a synthetic set's metadata, image counts and storage accounting."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from condense.synthetic import load

    s = load(file)
    m = s.meta
    facts = {
        "file": str(file), "file bytes": file.stat().st_size, "dataset": m.dataset, "algorithm": m.algorithm,
        "ipc": m.ipc, "classes": m.num_classes, "image shape": f"{m.channels}x{m.height}x{m.width}",
        "training images": len(s), "stored images": s.stored_images(), "stored bytes": s.stored_bytes(),
        "images per class": s.counts(), "pixel space": m.pixel_space, "learned lr": s.lr,
        "soft labels": None if s.soft_labels is None else dict(s.soft_attrs, shape=list(s.soft_labels.shape)),
        "compact parts": {k: list(v.shape) for k, v in s.compact.items()} or None,
        "protocol": m.protocol, "seed": m.seed, "condense version": m.condense_version, "created": m.created,
    }
    if as_json:
        print(json.dumps({**facts, "meta": asdict(m)}, indent=2, default=str))
        return
    table = Table(show_header=False, title=str(file), title_justify="left")
    for k, v in facts.items():
        if v is not None:
            table.add_row(k, str(v))
    table.add_row("config", json.dumps(m.config))
    Console().print(table)


@app.command()
def export(
    file: Path = typer.Argument(..., help="A synth.h5 file."),
    to: str = typer.Option(..., "--to", help="pt (images_best.pt, labels_best.pt, lr_best.pt) or imagefolder."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced atomically)."),
) -> None:
    """Export a synthetic set to the field's other formats."""
    from condense.synthetic import export_imagefolder, export_pt, load

    s = load(file)
    if to == "pt":
        export_pt(s, out_dir)
    elif to == "imagefolder":
        export_imagefolder(s, out_dir)
    else:
        raise CondenseError(f"--to '{to}' is not an export format; use pt or imagefolder.")
    _console().print(f"wrote {out_dir}")


def main() -> None:
    """Console entry point: allocator tuning, then the app, with exit codes as documented."""
    import logging
    import traceback

    from condense import runtime

    runtime.tune_allocator()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # torch.compile's CUDA_HOME notice
    try:
        code = app(standalone_mode=False)
    except CondenseError as e:
        label = "stopped" if e.exit_code == 130 else "[bold red]error:[/]"
        _console().print(f"{label} {e}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _console().print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "Abort":  # Ctrl-C inside the command-line parser
            sys.exit(130)
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # a usage error from typer's click
            e.show()
            sys.exit(1)
        # anything else is a bug: show everything
        traceback.print_exc()
        _console().print("[bold red]internal error[/] — this is a bug in condense; please report it with the "
                         "traceback above.")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> None:
    """The `condense` executable: `main` in a process of its own, which may therefore restart itself
    (see `condense.runtime.restart_with_huge_pages`) and ends without torch's C++ destructors
    (`condense.runtime.exit_now`); tests and notebooks call `main` and do neither."""
    from condense import runtime

    runtime.restartable = True
    try:
        main()
    except SystemExit as e:
        runtime.exit_now(e.code)


if __name__ == "__main__":
    entry()
