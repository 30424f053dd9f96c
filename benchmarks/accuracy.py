"""The accuracy suite: every accuracy number in benchmarks/RESULTS.md as `condense bench` and
`condense eval` commands.

    python benchmarks/accuracy.py --list                          # suites, one line each, with their cost
    python benchmarks/accuracy.py SUITE [CONFIG ...] [--dry-run] [--sets-dir DIR]

A suite is a set of named configurations. Configuration C of suite S writes
benchmarks/results/accuracy/S-C.{json,md} (or S-C.txt for a command that only prints), and appends one
JSON line per command it runs to benchmarks/results/cost/S-C.jsonl: wall, user and sys seconds, the
command's peak resident memory (ru_maxrss, what `/usr/bin/time -v` reports) and the machine. A bench
command's cost covers the distillations it had to do (none when its sets already exist) and the
evaluation.

Distilled sets are kept in --sets-dir (default $SETS_DIR, else condense-bench in the system's temporary
folder) under bench's names,
<dataset>-<algo>-ipc<k>-<preset>[-<tag>]-s<seed>.h5, and reused. Suites that evaluate other suites'
sets (select, softlabel, scores) therefore cost only their evaluations once those sets exist; `condense
eval` steps stop with a message naming the configuration that makes a missing set. Finished evaluation
runs are cached by condense, so an interrupted suite, run again, redoes only what is missing.

Everything is Fashion-MNIST, ConvNet-3, the `cpu` preset and protocol `dsa` (final epoch) unless a
configuration says otherwise. Costs are for 2 CPU cores. Run nothing else on the machine when the cost
lines matter.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class Set:
    """A set file made by `condense bench` (its naming), and the configuration that makes it."""

    def __init__(self, algo: str, ipc: int, made_by: str, tag: str = "", seed: int = 0):
        self.name = f"fashion-mnist-{algo}-ipc{ipc}-cpu{'-' + tag if tag else ''}-s{seed}.h5"
        self.made_by = made_by


def bench(algos: str, ipc: int, *options: str, tag: str = "", seed: int = 0) -> tuple:
    args = ["--algos", algos, "--ipc", str(ipc), "--preset", "cpu", "--seed", str(seed), *options]
    return ("bench", args + (["--tag", tag] if tag else []), None)


def evaluate(sets: list, *options: str) -> tuple:
    """`condense eval` on sets that other configurations made (bench cannot take these options)."""
    return ("eval", list(options), sets)


def printed(folder: str, *args: str) -> tuple:
    """A command whose standard output is the result (written to results/FOLDER/SUITE-CONFIG.txt)."""
    return ("print", list(args), folder)


IMPROVED = ["--set", "init=kmeans", "--set", "balance_loss=true", "--set", "middle_loss=true",
            "--set", "weight_perturb=1.0", "--set", "max_start_epoch_start=2",
            "--set", "window_growth_iters=150", "--set", "loss_gate=1.1"]
ABLATION = ["--set", "iters=300", "--runs", "2", "--epochs", "300", "--no-baseline"]

HERDING = {k: Set("herding", k, f"baselines ipc{k}") for k in (1, 10)}
KCENTER = {k: Set("kcenter", k, f"baselines ipc{k}") for k in (1, 10)}
NCFM = {k: Set("ncfm", k, f"ncfm ipc{k}") for k in (1, 10)}
INFER = {k: Set("infer", k, f"infer ipc{k}") for k in (10, 50)}
CVDD = {k: Set("cvdd", k, f"cvdd ipc{k}") for k in (1, 10)}
SCORED = [*HERDING.values(), *KCENTER.values(), *NCFM.values(),
          *(Set(a, k, f"matching ipc{k}-convnet") for a in ("dm", "datadam") for k in (1, 10)),
          Set("mtt", 1, "mtt ipc1"), Set("mtt", 10, "mtt ipc10"), Set("mtt", 10, "mtt ipc10-improved", "improved")]

# suite: (cost on 2 cores, what it measures, {configuration: command})
SUITES = {
    "baselines": ("about 2 h", "herding and k-center beside a random subset (IPC 1, 10); ConvNet-3 on all the data", {
        "ipc1": bench("herding,kcenter", 1, "--runs", "5"),
        "ipc10": bench("herding,kcenter", 10, "--runs", "5"),
        "wholedata": printed("accuracy", "teachers", "--dataset", "fashion-mnist", "--arch", "convnet",
                             "--epochs", "15", "--quiet"),
    }),
    "matching": ("about 2 h 10 min", "DM and DataDAM (official BN backbone), IPC 1 and 10, on the IN and the BN ConvNet-3", {
        "ipc1-convnet": bench("datadam,dm", 1, "--arch", "convnet", "--runs", "5", "--no-baseline"),
        "ipc1-convnetbn": bench("datadam,dm", 1, "--arch", "convnetbn", "--runs", "5"),
        "ipc10-convnet": bench("datadam,dm", 10, "--arch", "convnet", "--runs", "5", "--no-baseline"),
        "ipc10-convnetbn": bench("datadam,dm", 10, "--arch", "convnetbn", "--runs", "3"),
    }),
    "datadam-variants": ("about 2 h 30 min", "DataDAM at IPC 10 with the instance-norm backbone, power 4, attention weighted 3x", {
        "in-ipc10": bench("datadam", 10, "--set", "norm=instancenorm", "--runs", "3", "--no-baseline", tag="in"),
        "in-p4-ipc10": bench("datadam", 10, "--set", "norm=instancenorm", "--set", "power=4", "--runs", "3",
                             "--no-baseline", tag="in-p4"),
        "in-s3-ipc10": bench("datadam", 10, "--set", "norm=instancenorm", "--set", "scale=300",
                             "--set", "lam=0.003333", "--runs", "5", "--no-baseline", tag="in-s3"),
    }),
    # norm=instancenorm is DM's default, so the DM set of ipc10-seed1 is plain DM with seed 1.
    # bench's --seed seeds the evaluation too; the committed file evaluated both sets with seed 0.
    "seeds": ("about 1 h 30 min", "DM and DataDAM (IN) distilled with seed 1; DM seed 0 distilled again", {
        "ipc10-seed1": bench("dm,datadam", 10, "--set", "norm=instancenorm", "--runs", "5", "--no-baseline",
                             tag="in", seed=1),
        "dm-ipc10-rerun": bench("dm", 10, "--runs", "5", "--no-baseline", tag="rerun"),
    }),
    "ncfm": ("about 2 h 30 min", "NCFM at IPC 1 and 10, decoded and stored images (first run also trains its pool)", {
        "ipc10": bench("ncfm", 10, "--runs", "5", "--no-baseline"),
        "ipc1": bench("ncfm", 1, "--runs", "5", "--no-baseline"),
        "ipc10-nodecode": evaluate([NCFM[10]], "--no-decode", "--runs", "3"),
        "ipc1-nodecode": evaluate([NCFM[1]], "--no-decode", "--runs", "5"),
    }),
    "ncfm-ablation": ("about 1 h 15 min", "NCFM IPC 10 at 300 iterations, 2 runs x 300 epochs: base, +psi, -calibration, factor 1", {
        "base": bench("ncfm", 10, *ABLATION, tag="abl300"),
        "psi": bench("ncfm", 10, *ABLATION, "--set", "psi=true", tag="abl300-psi"),
        "nocalib": bench("ncfm", 10, *ABLATION, "--set", "calib=false", tag="abl300-nocalib"),
        "factor1": bench("ncfm", 10, *ABLATION, "--set", "factor=1", tag="abl300-factor1"),
    }),
    "mtt": ("about 2 h 15 min", "trajectory matching: 4 experts x 6 epochs, IPC 1 and 10, IPC 10 with the AST/DATM options", {
        "experts": printed("cost", "experts", "--dataset", "fashion-mnist", "--arch", "convnet", "--num", "4",
                           "--epochs", "6", "--recipe", "mtt"),
        "ipc1": bench("mtt", 1, "--runs", "5", "--no-baseline"),
        "ipc10": bench("mtt", 10, "--runs", "3", "--no-baseline"),
        "ipc10-improved": bench("mtt", 10, *IMPROVED, "--runs", "3", "--no-baseline", tag="improved"),
    }),
    "infer": ("about 2.5 h with the committee", "INFER on the cpu committee under kd-static with the random subset labelled by the committee; its images with hard labels; base images alone", {
        "committee": printed("cost", "teachers", "--dataset", "fashion-mnist", "--committee", "cpu"),
        "ipc10": bench("infer", 10, "--protocol", "kd-static", "--runs", "5"),
        "ipc10-base-only": evaluate([INFER[10]], "--no-decode", "--runs", "5"),
        "ipc10-dsa": evaluate([INFER[10]], "--protocol", "dsa", "--runs", "2"),
        # IPC 50: one evaluation run each (a kd-static run of 500 images is about 6 min on 2 cores)
        "ipc50": bench("infer", 50, "--protocol", "kd-static", "--runs", "1"),
        "ipc50-base-only": evaluate([INFER[50]], "--no-decode", "--runs", "1"),
    }),
    "cvdd": ("about 1 h with the committee cached, and about 8 min per KD-loss configuration", "CV-DD on the cpu committee: replayed labels (kd-replay) and mode M (kd-sre2l), each beside a random subset labelled by the same weighted committee; the single-teacher variant; the KD losses", {
        "ipc1": bench("cvdd", 1, "--protocol", "kd-replay", "--runs", "3"),
        "ipc1-modem": evaluate([CVDD[1]], "--protocol", "kd-sre2l", "--runs", "3", "--baseline", "random"),
        # the same, with the committee's plain mean in eval mode (no prior weights, no BSSL): what BSSL costs
        "ipc1-modem-evalbn": evaluate([CVDD[1]], "--protocol", "kd-sre2l", "--committee", "cpu", "--runs", "3",
                                      "--baseline", "random"),
        "ipc10": bench("cvdd", 10, "--protocol", "kd-replay", "--runs", "3"),
        "ipc10-modem": evaluate([CVDD[10]], "--protocol", "kd-sre2l", "--runs", "3", "--baseline", "random"),
        # the mosaics alone (one recover step): what the committee-voting recover adds at IPC 1
        "ipc1-patches": bench("cvdd", 1, "--set", "recover_iters=1", "--protocol", "kd-replay", "--runs", "3",
                              "--no-baseline", tag="patches"),
        "ipc10-single": bench("cvdd", 10, "--set", "members=best", "--protocol", "kd-replay", "--runs", "3",
                              "--no-baseline", tag="single"),
        # the KD loss family on the CV-DD IPC 10 set and a random subset, replayed labels, 2 runs each
        **{f"ipc10-{loss}": evaluate([CVDD[10]], "--protocol", "kd-replay", "--kd-loss", loss, "--runs", "2",
                                     "--baseline", "random") for loss in ("sce", "mse_gt", "dist", "dkd")},
    }),
    "kdloss": ("about 5 min per configuration, given the INFER IPC 10 set", "one run each of the INFER IPC 10 set and a random subset under kd-static with another distillation loss (a probe, not a table)", {
        f"{loss}-ipc10": evaluate([INFER[10]], "--kd-loss", loss, "--runs", "1", "--baseline", "random")
        for loss in ("dkd", "mse_gt", "dist")
    }),
    "softlabel": ("about 10 min, given sets", "herding and NCFM at IPC 1 under kd-static and kd-sre2l, random labelled by the same teacher", {
        "kd-static-ipc1": bench("herding,ncfm", 1, "--protocol", "kd-static", "--runs", "3"),
        "kd-sre2l-ipc1": bench("herding,ncfm", 1, "--protocol", "kd-sre2l", "--runs", "3"),
    }),
    "select": ("about 20 min, given sets", "final epoch vs validation-selected vs best test checkpoint, herding sets", {
        "ipc1": evaluate([HERDING[1]], "--select", "val", "--select-every", "100", "--runs", "5"),
        "ipc10": evaluate([HERDING[10]], "--select", "val", "--select-every", "100", "--runs", "3"),
    }),
    "scores": ("about 4 h, minutes if cached", "DD-Ranking HLR, IOR and LRS of every dsa set above, from cached runs where possible", {
        "dsa": evaluate(SCORED, "--baseline", "random", "--full-acc", "93.3"),
    }),
}


def command(suite: str, config: str, sets_dir: Path) -> tuple[list[str], Path | None, list[Set]]:
    """(argv, file that receives standard output or None, sets that must exist) of one configuration."""
    kind, args, extra = SUITES[suite][2][config]
    base = os.path.relpath(RESULTS / "accuracy" / f"{suite}-{config}")
    if kind == "bench":
        out = ["--sets-dir", str(sets_dir), "--out", f"{base}.md", "--json", f"{base}.json", "--quiet"]
        return ["condense", "bench", *args, *out], None, []
    if kind == "eval":
        out = ["--json", f"{base}.json", "--markdown", f"{base}.md", "--quiet"]
        return ["condense", "eval", *(str(sets_dir / s.name) for s in extra), *args, *out], None, extra
    return ["condense", *args], Path(os.path.relpath(RESULTS / extra / f"{suite}-{config}.txt")), []


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"cpu": cpu, "threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 0),
            "torch": torch, "python": platform.python_version(), "commit": commit}


def run(suite: str, config: str, argv: list[str], stdout: Path | None, sets_dir: Path) -> None:
    """Run one command; append its cost to results/cost/SUITE-CONFIG.jsonl; stop the suite on failure.
    The results name set files as $SETS_DIR/..., not by this machine's path."""
    out = open(stdout, "w") if stdout else None
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if out:
        out.close()
    rc = os.waitstatus_to_exitcode(status)
    row = {"suite": suite, "configuration": config, "command": shlex.join(argv), "rc": rc,
           "wall_s": round(wall, 2), "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "machine": machine()}
    with open(RESULTS / "cost" / f"{suite}-{config}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if rc != 0:
        sys.exit(f"{suite} {config}: `{shlex.join(argv)}` exited with {rc}; nothing after it was run.")
    for p in [*(RESULTS / "accuracy").glob(f"{suite}-{config}.*"), RESULTS / "cost" / f"{suite}-{config}.jsonl"]:
        p.write_text(p.read_text().replace(str(sets_dir), "$SETS_DIR"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?", help="a suite from --list")
    ap.add_argument("configs", nargs="*", help="only these configurations of the suite (default: all, in order)")
    ap.add_argument("--list", action="store_true", help="list the suites, their configurations and their cost")
    ap.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    ap.add_argument("--sets-dir", type=Path,
                    default=Path(os.environ.get("SETS_DIR") or Path(tempfile.gettempdir()) / "condense-bench"),
                    help="where distilled sets are kept and reused (default $SETS_DIR, else condense-bench in the "
                         "system's temporary folder)")
    args = ap.parse_args()
    if args.list or not args.suite:
        for name, (cost, what, configs) in SUITES.items():
            print(f"{name:16} {cost:29} {what} [{', '.join(configs)}]")
        return
    if args.suite not in SUITES:
        sys.exit(f"unknown suite '{args.suite}'; known: {', '.join(SUITES)}")
    configs = args.configs or list(SUITES[args.suite][2])
    unknown = [c for c in configs if c not in SUITES[args.suite][2]]
    if unknown:
        sys.exit(f"suite {args.suite} has no configuration {', '.join(unknown)}; it has {', '.join(SUITES[args.suite][2])}")
    if not args.dry_run and shutil.which("condense") is None:
        sys.exit("the `condense` executable is not on PATH; install the project first (pip install -e .)")
    for config in configs:
        argv, stdout, needs = command(args.suite, config, args.sets_dir)
        print(f"# {args.suite} {config}\n{shlex.join(argv)}" + (f" > {stdout}" if stdout else ""), flush=True)
        if args.dry_run:
            continue
        missing = [s for s in needs if not (args.sets_dir / s.name).is_file()]
        if missing:
            sys.exit("missing " + "; ".join(f"{args.sets_dir / s.name} (made by `python benchmarks/accuracy.py "
                                            f"{s.made_by}`)" for s in missing))
        for folder in (RESULTS / "accuracy", RESULTS / "cost", args.sets_dir):
            folder.mkdir(parents=True, exist_ok=True)
        run(args.suite, config, argv, stdout, args.sets_dir)


if __name__ == "__main__":
    main()
