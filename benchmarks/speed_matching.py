"""Seconds per iteration and peak memory of a distillation method (dm, datadam, ncfm, mtt, ...)
on Fashion-MNIST, in one fresh process per setting so that peak RSS belongs to that setting.

    python benchmarks/speed_matching.py ALGO IPC ITERS [key=value ...] [--json-out FILE]

Prints one JSON line: seconds per iteration (the first iteration, which warms up allocators,
is reported separately), peak resident memory of the process (ru_maxrss), user/sys CPU time,
and the RSS of the process before distillation starts (the torch/CUDA-build import alone is
most of it). Example, NCFM with the official CIFAR-10 settings applied to Fashion-MNIST:

    python benchmarks/speed_matching.py ncfm 10 4 batch_real=1024 num_freqs=4096 factor=2 \\
        calib=true pool_size=20 pool_epochs=0
"""
from __future__ import annotations

import json
import resource
import sys
import time

from condense.runtime import exit_now, tune_allocator

tune_allocator()

import torch  # noqa: E402

import algorithms  # noqa: E402
from algorithms.base import Context, config_from  # noqa: E402
from condense.artifacts import Artifacts  # noqa: E402
from condense.data import load_dataset  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = sys.argv[sys.argv.index("--json-out") + 1] if "--json-out" in sys.argv else None
    if out in args:
        args.remove(out)
    algo, ipc, iters = args[0], int(args[1]), int(args[2])
    over = dict(a.split("=", 1) for a in args[3:])
    real = load_dataset("fashion-mnist")
    cls = algorithms.ALGORITHMS.get(algo)
    cfg = config_from(cls, {"ipc": ipc, "iters": iters, **over})
    a = cls(cfg, real, Context(seed=0, artifacts=Artifacts()))
    measure(a, iters, {"algo": algo, "ipc": ipc, "settings": over}, out)


def measure(a, iters: int, row: dict, out: str | None, warmup: int = 1) -> dict:
    """Initialize algorithm `a`, run `warmup` steps untimed (the first reported apart: allocators and
    the heap grow to their working size there), time the remaining steps, print and append one JSON
    line: `row` plus seconds per iteration, peak RSS and CPU times. Shared with speed_mtt.py."""
    a.init()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    a.step(0)
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        a.step(i)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i in range(warmup, iters):
        a.step(i)
    dt = (time.perf_counter() - t0) / max(iters - warmup, 1)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    row = {**row, "iters_timed": iters - warmup, "warmup": warmup, "s_per_iter": round(dt, 3),
           "first_iter_s": round(first, 3), "peak_rss_mb": round(r1.ru_maxrss / 1024),
           "rss_before_distill_mb": round(rss_before / 1024),
           "user_s_per_iter": round((r1.ru_utime - r0.ru_utime) / max(iters - 1, 1), 3),
           "sys_s_per_iter": round((r1.ru_stime - r0.ru_stime) / max(iters - 1, 1), 3),
           "threads": torch.get_num_threads()}
    line = json.dumps(row)
    print(line)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    return row

if __name__ == "__main__":
    main()
    exit_now(0)  # as the condense executable ends: peak RSS as /usr/bin/time sees it = the reported one
