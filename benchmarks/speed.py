"""The speed and memory harness: seconds per iteration and peak memory, one fresh process per row.

    python benchmarks/speed.py --list                      # the suites and their configurations
    python benchmarks/speed.py SUITE [CONFIG ...] [--fast on|off|both] [--repeat N]
    python benchmarks/speed.py one ALGO IPC ITERS [key=value ...] [--warmup K]   # a single row, printed

Every row is one JSON line appended to benchmarks/results/speed/<suite>.jsonl: the suite and
configuration, the settings, seconds per timed iteration (the first, warm-up iterations apart),
peak resident memory of the process (ru_maxrss, so each row runs in a process of its own), user and
system CPU seconds per iteration, and a `machine` fingerprint (CPU model, cores, threads, torch,
device, Python, commit). The child process starts the way the `condense` executable does
(`condense.runtime.tune_process`), so the numbers are what a user of the command line gets.

Settings follow benchmarks/RESULTS.md ("speed and memory"): the official defaults of DM and DataDAM,
NCFM at the official CIFAR-10 settings applied to Fashion-MNIST (untrained 20-network pool: speed
does not depend on the weights), trajectory matching with stand-in experts of the right shape.
`--fast both` measures every configuration with the `condense.fast` switch on and off, alternating.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "speed"

NCFM_OFFICIAL = ["batch_real=1024", "num_freqs=4096", "factor=2", "calib=true", "pool_size=20", "pool_epochs=0"]
MTT = ["num_experts=2", "max_start_epoch=2", "expert_epochs=2"]
SUITES: dict[str, dict[str, list[str]]] = {  # configuration -> arguments of `one`
    "dm": {"ipc1": ["dm", "1", "6"], "ipc10": ["dm", "10", "6"]},
    "datadam": {"ipc1": ["datadam", "1", "6"], "ipc10": ["datadam", "10", "6"]},
    "ncfm-official": {"ipc1": ["ncfm", "1", "5", *NCFM_OFFICIAL], "ipc10": ["ncfm", "10", "5", *NCFM_OFFICIAL]},
    "mtt": {"ipc1-n50-unroll": ["mtt", "1", "4", "syn_steps=50", "memory=unroll", *MTT],
            "ipc1-n50-recompute": ["mtt", "1", "4", "syn_steps=50", "memory=recompute", *MTT],
            "ipc10-n30-unroll": ["mtt", "10", "3", "syn_steps=30", "memory=unroll", *MTT],
            "ipc10-n30-recompute": ["mtt", "10", "3", "syn_steps=30", "memory=recompute", *MTT]},
    "train": {"convnet-b256": ["train", "256", "30"], "convnet-b256-eager": ["train", "256", "30", "compile=false"]},
    "eval": {"ipc10-5runs-50ep": ["eval", "10", "50"], "ipc10-5runs-50ep-stacked": ["eval", "10", "50", "stack=true"]},
}


def machine() -> dict:
    """Where a row was measured."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device, "python": platform.python_version(), "commit": commit}


def _stand_in_experts(cache):
    """Expert trajectories of the right shape with random values (an iteration's cost does not
    depend on them), so no hour of expert training is needed."""
    import torch

    from condense.artifacts import Artifacts
    from condense.models import FlatParams, build_model

    class StandIn(Artifacts):
        def expert(self, real, arch, recipe, index):  # type: ignore[override]
            net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=index)
            start = FlatParams(net).flatten(net)
            steps = torch.randn(recipe.epochs, start.numel(), generator=torch.Generator().manual_seed(index)) * 1e-3
            return torch.cat([start[None], start[None] + steps.cumsum(0)])

    return StandIn(cache)


def one(args: list[str], warmup: int = 1) -> dict:
    """One row in this process: `ALGO IPC ITERS [key=value ...]`, or `train BATCH STEPS [compile=...]`."""
    from condense.runtime import tune_process

    tune_process()
    import torch

    from condense.data import load_dataset

    real = load_dataset("fashion-mnist")
    values = dict(a.split("=", 1) for a in args[3:])
    if args[0] == "train":
        return _train_rate(real, int(args[1]), int(args[2]), values.get("compile", "true") == "true")
    if args[0] == "eval":
        return _eval_time(real, int(args[1]), int(args[2]), values.get("stack", "false") == "true")
    import algorithms  # noqa: F401  (fills the registry)
    from algorithms.base import build
    from condense import fast
    from condense.artifacts import Artifacts

    algo, ipc, iters = args[0], int(args[1]), int(args[2])
    artifacts = _stand_in_experts(None) if algo == "mtt" else Artifacts()
    method = build(algo, real, ipc, overrides=values, iters=iters, artifacts=artifacts)
    with fast.use(method.ctx.execution.fast):
        method.init()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        for i in range(warmup):
            method.step(i)
        first = time.perf_counter() - t0
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(warmup, iters):
            method.step(i)
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    n = max(iters - warmup, 1)
    return {"algo": algo, "ipc": ipc, "settings": values, "fast": method.ctx.execution.fast, "iters_timed": n,
            "warmup": warmup, "s_per_iter": round(dt / n, 3), "warmup_s": round(first, 3),
            "peak_rss_mb": round(r1.ru_maxrss / 1024), "rss_before_mb": round(rss_before / 1024),
            "user_s_per_iter": round((r1.ru_utime - r0.ru_utime) / n, 3),
            "sys_s_per_iter": round((r1.ru_stime - r0.ru_stime) / n, 3), "threads": torch.get_num_threads()}


def _train_rate(real, batch: int, steps: int, compile: bool) -> dict:
    """ConvNet-3 training steps (forward, backward, SGD) on real batches: images per second."""
    import torch
    import torch.nn.functional as F

    from condense import fast
    from condense.execution import compile_fn
    from condense.models import build_model

    net = build_model("convnet", 1, 10, 28, seed=0)
    forward = compile_fn(net) if compile else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = real.get(torch.arange(batch)), real.train.labels[:batch]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"algo": "train", "settings": {"batch": batch, "compile": compile}, "fast": fast.is_fast(),
            "iters_timed": steps, "s_per_iter": round(dt / steps, 4), "images_per_s": round(batch * steps / dt),
            "peak_rss_mb": round(r1.ru_maxrss / 1024), "user_s_per_iter": round((r1.ru_utime - r0.ru_utime) / steps, 4),
            "sys_s_per_iter": round((r1.ru_stime - r0.ru_stime) / steps, 4), "threads": torch.get_num_threads()}


def _eval_time(real, ipc: int, epochs: int, stack: bool) -> dict:
    """One evaluation as `condense eval` runs it (5 runs of ConvNet-3, dsa protocol at `epochs`, compiled)
    on a random `ipc`-per-class real subset: seconds for the whole evaluation."""
    import torch

    from condense import fast
    from condense.runtime import make_generator
    from condense.synthetic import SetMeta, SyntheticSet
    from evaluators.protocols import get_protocol
    from evaluators.retrain import EvalSettings, evaluate_set

    x, y = real.random_subset(ipc, make_generator(0))
    i = real.info
    synth = SyntheticSet(x.cpu(), y.cpu(), SetMeta(i.name, i.num_classes, i.class_names, ipc, i.channels, i.size,
                                                    i.size, i.mean, i.std, algorithm="random"))
    settings = EvalSettings(get_protocol("dsa").with_epochs(epochs), ["convnet"], 5, compile=True, stack=stack)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    res = evaluate_set(synth, real, settings)[0]
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"algo": "eval", "settings": {"ipc": ipc, "epochs": epochs, "runs": 5, "stack": stack}, "fast": fast.is_fast(),
            "seconds": round(dt, 1), "mean_acc": round(res.mean, 4), "peak_rss_mb": round(r1.ru_maxrss / 1024),
            "user_s": round(r1.ru_utime - r0.ru_utime, 1), "sys_s": round(r1.ru_stime - r0.ru_stime, 1),
            "threads": torch.get_num_threads()}


def run_suite(suite: str, configs: list[str], fast: str, repeat: int, out: Path) -> None:
    """Each configuration (and fast setting) in a fresh process, alternating, appended to `out`."""
    if suite == "ncfm-official":  # the untrained 20-network pool the rows load
        subprocess.run(["condense", "teachers", "--pool", "ncfm", "--set", "pool_size=20", "--set", "pool_epochs=0",
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
    switches = {"on": ["true"], "off": ["false"], "both": ["true", "false"]}[fast]
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(repeat):
        for config in configs:
            for switch in switches:
                args = [*SUITES[suite][config], f"fast={switch}"]
                res = subprocess.run([sys.executable, __file__, "one", *args], capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit(f"{suite}/{config} failed:\n{res.stderr[-3000:]}")
                row = {"suite": suite, "config": config, **json.loads(res.stdout.strip().splitlines()[-1])}
                line = json.dumps(row)
                print(line, flush=True)
                with open(out, "a") as f:
                    f.write(line + "\n")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv[0] == "--list":
        for name, configs in SUITES.items():
            print(f"{name}: {', '.join(configs)}")
        return
    opts = {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--") and i + 1 < len(argv)}
    args = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or not argv[i - 1].startswith("--"))]
    if args[0] == "one":
        print(json.dumps({**one(args[1:], int(opts.get("--warmup", 1))), "machine": machine()}))
        return
    suite = args[0]
    if suite not in SUITES:
        sys.exit(f"unknown suite {suite!r}; --list shows them")
    configs = args[1:] or list(SUITES[suite])
    bad = [c for c in configs if c not in SUITES[suite]]
    if bad:
        sys.exit(f"suite {suite} has no configuration {bad}; it has {', '.join(SUITES[suite])}")
    run_suite(suite, configs, opts.get("--fast", "on"), int(opts.get("--repeat", 1)),
              Path(opts.get("--out", OUT / f"{suite}.jsonl")))


if __name__ == "__main__":
    main(sys.argv[1:])
