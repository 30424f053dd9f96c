"""The `condense` command line (typer): the application shell, the one core module that imports
`algorithms` and `evaluators`. It parses and wires; the work lives in `condense/run.py`, `algorithms/`
and `evaluators/`. Exit codes: 0 success, 1 user error (a one-paragraph message, no traceback),
2 internal error (a bug: the traceback is printed), 130 interrupted.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from condense.errors import CondenseError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Dataset distillation: condense a labelled image dataset into a few synthetic images "
                       "per class, and evaluate the result the same way every time.")

Device = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
Seed = typer.Option(0, "--seed", help="Seed of every random stream of the run.")
DataRoot = typer.Option(None, "--data-root", help="Folder with the dataset files (searched first).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
Cache = typer.Option(None, "--cache", help="Artifact cache (default $CONDENSE_CACHE or ~/.cache/condense/artifacts).")
Sets = typer.Option([], "--set", help="Override a method or execution setting (chunk, compile, ...): key=value, repeatable.")
Dataset = typer.Option("fashion-mnist", "--dataset", help="fashion-mnist, mnist, cifar10, cifar100, svhn, "
                       "tiny-imagenet, imagefolder:PATH[@SIZE], imagenet:PATH[@SIZE].")
ClassMap = typer.Option(None, "--class-map", help="JSON object: the set's classes -> the dataset's ({}: match by "
                        "identifier); see condense/classes.py.")


def _console() -> Console:
    return Console(stderr=True)


def _table(title: str, rows, columns: tuple[str, ...] = ()) -> None:
    table = Table(*columns, title=title, title_justify="left", show_header=bool(columns))
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


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


def _real(dataset: str, data_root, device: str, zca: bool = False, download: bool = False, lazy=None):
    from condense.data import load_dataset
    from condense.runtime import resolve_device

    return load_dataset(dataset, data_root, download, zca=zca, device=resolve_device(device), lazy=lazy)


@app.command()
def distill(
    algo: str = typer.Option(..., "--algo", help="random, herding, kcenter, dm, datadam, mtt, ncfm, infer or cvdd."),
    ipc: int = typer.Option(10, "--ipc", help="Synthetic images per class."),
    dataset: str = Dataset,
    out: Path = typer.Option(Path("synth.h5"), "--out", "-o", help="Output file (written atomically)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Outer iterations (default: preset / method)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named settings from assets/presets (cpu, paper)."),
    set_: List[str] = Sets,
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="Checkpoint to OUT.ckpt every K iterations."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.ckpt."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint file."),
    eval_every: int = typer.Option(0, "--eval-every", help="Quick evaluation (1 ConvNet, 300 epochs) every K its."),
    zca: bool = typer.Option(False, "--zca", help="ZCA-whiten the data (kornia, eps 0.1)."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download a missing dataset."),
    cache: Optional[Path] = Cache, seed: int = Seed, device: str = Device, data_root: Optional[Path] = DataRoot,
    quiet: bool = Quiet,
) -> None:
    """Distill a synthetic set and write it to OUT (synth.h5)."""
    real = _real(dataset, data_root, device, zca, download)
    _distill_one(algo, ipc, real, out, preset, _parse_sets(set_), iters, seed, cache, _reporter(quiet), ckpt_every,
                 resume_from or (Path(str(out) + ".ckpt") if resume else None), eval_every)


def _distill_one(algo: str, ipc: int, real, out: Path, preset: Optional[str], overrides: dict, iters: Optional[int],
                 seed: int, cache: Optional[Path], reporter, ckpt_every: int = 100, resume: Optional[Path] = None,
                 eval_every: int = 0):
    """Build the configured algorithm and run it through the driver (shared by distill and bench)."""
    import algorithms  # noqa: F401  (fills the registry)
    from algorithms.base import build
    from condense.artifacts import Artifacts
    from condense.run import RunSpec, run_distill
    from evaluators.retrain import quick_evaluation

    method = build(algo, real, ipc, preset, overrides, iters, seed, Artifacts(cache, reporter, real.device, compile=True))
    evaluate = quick_evaluation(real, seed) if eval_every else None
    spec = RunSpec(method.name, real.info.name, ipc, out, seed, preset, iters, overrides, ckpt_every, resume,
                   eval_every, real.pre.pixel_space == "zca")
    t0 = time.time()
    synth = run_distill(method, spec, reporter, evaluate)
    reporter.log(f"wrote {out}: {len(synth)} images ({synth.meta.ipc} per class, {synth.meta.dataset}, "
                 f"{method.name}) in {time.time() - t0:.1f}s")


@app.command("eval")
def eval_(
    files: List[Path] = typer.Argument(..., help="Synthetic sets (synth.h5) to evaluate."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Comma-separated architectures (default: the protocol's)."),
    runs: Optional[int] = typer.Option(None, "--runs", help="Networks trained per architecture (default 5)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the protocol's epochs (labelled)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Named evaluation protocol (assets/protocols; "
                                           "default: the one the files name, dsa for most methods)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="random: add a random real subset, same protocol."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as Markdown."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset to test on (default: the file's)."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Train on the stored (compact) images, not the decoded."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile the networks (same math up to "
                                 "rounding; about 2x faster on CPU)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Soft-label protocols: teacher architectures, "
                                          "comma-separated (default: the file's, else convnet)."),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="Teachers' epochs on the whole "
                                                 "training split (cached; default: the file's, else 15)."),
    teacher_num: Optional[int] = typer.Option(None, "--teacher-num", help="Teachers per architecture (default 1)."),
    committee: Optional[str] = typer.Option(None, "--committee", help="Soft-label protocols: a named teacher "
                                            "committee (assets/committees) as the teachers."),
    kd_loss: Optional[str] = typer.Option(None, "--kd-loss", help="Soft-label protocols: the distillation loss "
                                          "instead of the protocol's (kl, sce, mse_gt, dist, dkd; condense/kd.py)."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain runs the run cache has (else eval resumes)."),
    stack: Optional[bool] = typer.Option(None, "--stack/--no-stack", help="Train a ConvNet's runs as one grouped "
                                         "network (same numbers; default: on CUDA only)."),
    select: str = typer.Option("final", "--select", help="final (last epoch) | val (epoch chosen on held-out "
                               "training images) | test-best (legacy, optimistic, labelled)."),
    select_every: int = typer.Option(0, "--select-every", help="Checkpoint interval for val/test-best."),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="With --select val: comma-separated lrs; the best "
                                          "mean validation accuracy picks one."),
    val_size: int = typer.Option(500, "--val-size", help="Validation images held out per class for --select val."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw accuracy vs IPC as a PNG (matplotlib)."),
    ars: bool = typer.Option(False, "--ars", help="With --baseline random: add DD-Ranking's ARS (+ no-aug runs)."),
    full_acc: Optional[float] = typer.Option(None, "--full-acc", help="Whole-data test accuracy (%) of the "
                                             "architecture: adds DD-Ranking's HLR, IOR, LRS."),
    class_map: Optional[Path] = ClassMap, seed: int = Seed, device: str = Device,
    data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Retrain fresh networks on synthetic sets and report test accuracy per IPC and architecture."""
    from evaluators.evaluate import EvalRequest, evaluate_files

    req = EvalRequest(files, protocol, epochs, arch, runs, baseline, dataset, no_decode, compile, teacher,
                      teacher_epochs, teacher_num, committee, fresh, stack, select, select_every, lr_grid, val_size, plot, ars,
                      full_acc, seed, device, data_root, kd_loss, class_map)
    (report := evaluate_files(req, _reporter(quiet))).print(Console())
    for path, write in ((json_out, report.save_json), (markdown, report.save_markdown), (plot, report.plot)):
        if path:
            write(path)


@app.command()
def bench(
    dataset: str = Dataset,
    algos: str = typer.Option("random,dm,datadam,ncfm", "--algos", help="Comma-separated methods."),
    ipc: str = typer.Option("1,10", "--ipc", help="Comma-separated IPCs."),
    preset: Optional[str] = typer.Option("cpu", "--preset", help="Preset of every method that has it."),
    set_: List[str] = typer.Option([], "--set", help="key=value for every listed method that has the setting."),
    tag: str = typer.Option("", "--tag", help="Added to the set file names (variants made with other --set)."),
    protocol: str = typer.Option("dsa", "--protocol"),
    arch: Optional[str] = typer.Option(None, "--arch", help="Evaluation architectures (default: the protocol's)."),
    runs: Optional[int] = typer.Option(None, "--runs"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Add the random real subset's row."),
    sets_dir: Path = typer.Option(Path("bench-sets"), "--sets-dir", help="Where sets are kept, reused and resumed."),
    out: Path = typer.Option(Path("bench.md"), "--out", help="Markdown report (with the commands behind it)."),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Accuracy vs IPC as a PNG (matplotlib)."),
    cache: Optional[Path] = Cache, seed: int = Seed, device: str = Device, data_root: Optional[Path] = DataRoot,
    quiet: bool = Quiet,
) -> None:
    """The whole suite in one command: distill every method at every IPC (reusing sets already made),
    evaluate them and the random baseline under one protocol, write a report (and plot)."""
    import algorithms
    from algorithms.base import applicable
    from evaluators.bench import BenchSet, plan_sets, run_bench
    from evaluators.evaluate import make_settings

    overrides = _parse_sets(set_)  # each method gets the --set values it has:
    mine = {c.name: applicable(c, overrides) for c in (algorithms.ALGORITHMS.get(a.strip()) for a in algos.split(",")
                                                      if a.strip())}
    settings = make_settings(protocol, epochs, arch, runs, seed, True)
    reporter, real = _reporter(quiet), _real(dataset, data_root, device)
    jobs = plan_sets(ipc, real.info.name, preset, overrides, mine, sets_dir, tag, seed)

    def make(s: BenchSet) -> None:
        ckpt = Path(str(s.path) + ".ckpt")
        _distill_one(s.algo, s.ipc, real, s.path, s.preset, mine[s.algo], None, seed, cache, reporter,
                     resume=ckpt if ckpt.is_file() else None)

    run_bench(jobs, make, real, settings, baseline, out, json_out, plot, reporter, cache).print(Console())


@app.command()
def teachers(
    dataset: str = Dataset,
    arch: str = typer.Option("convnet", "--arch", help="Comma-separated architectures."),
    epochs: int = typer.Option(15, "--epochs", help="Epochs over the training split (15: the soft-label default)."),
    num: int = typer.Option(1, "--num", help="Networks per architecture (seeds 0..num-1)."),
    lr: float = typer.Option(0.01, "--lr"),
    augment: str = typer.Option("none", "--augment", help="DSA strategy used while training, or none."),
    select: str = typer.Option("final", "--select", help="val: hold out eval --select val's images, report val acc."),
    committee: Optional[str] = typer.Option(None, "--committee", help="Build a named committee (assets/committees)."),
    pool: Optional[str] = typer.Option(None, "--pool", help="Build what a method needs instead (ncfm: its pool)."),
    priors: bool = typer.Option(False, "--priors", help="With --committee: measure CV-DD's prior=distill priors."),
    preset: Optional[str] = typer.Option(None, "--preset", help="With --pool or --priors: the method's preset."),
    ipc: int = typer.Option(10, "--ipc", help="With --pool: the IPC whose preset applies."),
    set_: List[str] = typer.Option([], "--set", help="With --pool or --priors: override a method setting."),
    weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="Import a pretrained committee's weights."),
    zca: bool = typer.Option(False, "--zca"), cache: Optional[Path] = Cache, device: str = Device,
    data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Train (or load from the cache, or import) networks on the real training split; print their accuracies."""
    from condense.artifacts import Artifacts, teacher_recipe
    from condense.committee import adhoc_spec, committee_spec, load_committee

    real = _real(dataset, data_root, device, zca)
    store = Artifacts(cache, _reporter(quiet), real.device, compile=True, weights=weights)
    if pool is not None:
        import algorithms  # noqa: F401  (fills the registry)
        from algorithms.base import artifacts_for

        jobs = artifacts_for(pool, real.info.name, ipc, preset, _parse_sets(set_))
        _table(f"{real.info.name}: networks for {pool} ({len(jobs)})", store.summary(real, jobs),
               ("arch", "seed", "epochs", "test acc (%)", "train time (s)", "file"))
        return
    spec = committee_spec(real.info.name, committee) if committee else adhoc_spec(
        [a.strip() for a in arch.split(",") if a.strip()], teacher_recipe(epochs, lr, augment), num,
        500 if select == "val" else 0)
    _table(*(members := load_committee(store, real, spec)).table(real.info.name))
    if priors:  # one CV-DD distillation (IPC 1) and evaluation per member, cached with the committee
        from evaluators.priors import measure_with
        measure_with(real, members, store, preset, _parse_sets(set_), store.reporter, lambda i, path, sets:
                     _distill_one("cvdd", 1, real, path, preset, sets, None, 0, cache, store.reporter))


@app.command()
def experts(
    dataset: str = Dataset,
    arch: str = typer.Option("convnet", "--arch"),
    num: int = typer.Option(5, "--num", help="Number of expert trajectories."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs per expert: max_start_epoch + expert_epochs suffice."),
    recipe: str = typer.Option("mtt", "--recipe", help="mtt (plain SGD, as MTT) or smooth (AST's smooth experts)."),
    zca: bool = typer.Option(False, "--zca", help="Train in ZCA-whitened space (distill with --zca too)."),
    cache: Optional[Path] = Cache, device: str = Device, data_root: Optional[Path] = DataRoot, quiet: bool = Quiet,
) -> None:
    """Train (or load from the cache) expert trajectories for trajectory matching."""
    from condense.artifacts import Artifacts, expert_recipe

    real, t0 = _real(dataset, data_root, device, zca), time.time()
    store = Artifacts(cache, _reporter(quiet), real.device, compile=True)
    folder, size = store.experts(real, arch, expert_recipe(recipe, epochs), num)
    _console().print(f"{num} {recipe} experts of {arch} on {real.info.name} ({epochs} epochs each) in {folder} "
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

    save_grid(load(file).stored_set() if stored else load(file), out, per_class, upscale)
    _console().print(f"wrote {out}")


@app.command()
def info(file: Path = typer.Argument(..., help="A synth.h5 file."),
         as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON.")) -> None:
    """Print a synthetic set's metadata, image counts and storage accounting."""
    from condense.synthetic import load

    facts = (s := load(file)).facts(file)
    if as_json:
        print(json.dumps(facts, indent=2, default=str))
        return
    rows = [(k, v) for k, v in facts.items() if v is not None and k != "meta"]
    _table(str(file), rows + [("config", json.dumps(s.meta.config))])


@app.command()
def export(
    file: Path = typer.Argument(..., help="A synth.h5 file."),
    to: str = typer.Option(..., "--to", help="pt (images_best.pt, labels_best.pt, lr_best.pt) or imagefolder."),
    out_dir: Path = typer.Argument(..., help="Output folder (replaced atomically)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Check the set's class order against it."),
    class_map: Optional[Path] = ClassMap, data_root: Optional[Path] = DataRoot,
) -> None:
    """Export a synthetic set to the field's other formats (in a dataset's class order with --dataset)."""
    from condense.synthetic import export, load

    info = _real(dataset, data_root, "cpu", lazy=True).info if dataset else None
    _console().print(f"wrote {export(load(file, dataset=info, class_map=class_map), to, out_dir)}")


def main() -> None:
    """The app with exit codes as documented (tests call this in-process)."""
    import traceback

    try:
        code = app(standalone_mode=False)
    except CondenseError as e:
        _console().print(f"{'stopped' if e.exit_code == 130 else '[bold red]error:[/]'} {escape(str(e))}", highlight=False)
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
        traceback.print_exc()  # anything else is a bug: show everything
        _console().print("[bold red]internal error[/] — this is a bug in condense; please report it with the "
                         "traceback above.")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> None:
    """The `condense` executable: the one process-level setting (`condense.runtime.tune_process`;
    the README documents it, CONDENSE_TUNE_PROCESS=0 turns it off), then `main`."""
    from condense.runtime import tune_process

    tune_process()
    main()


if __name__ == "__main__":
    entry()
