"""How fast could a setting run with this machine's own matrix kernels? A tighter floor than flops.py.

flops.py divides an iteration's convolution and matmul FLOPs by the best rate any kernel reaches here.
Small problems (trajectory matching at IPC 1 steps on 10 images) never reach that rate, so this script
asks the kernels themselves: it records every convolution, convolution-backward and matrix-product call
of one real iteration (a TorchDispatchMode sees them below autograd, double backward included), then
replays each distinct call (same operator, shapes, strides and arguments; random values) alone, many
times, and keeps its fastest time. The floor is the sum over calls of those fastest times: the iteration
with every other operation (norms, activations, pooling, augmentation, optimizer, Python) free and every
matrix kernel at its best. If the floor is above a target, no code built on these kernels can meet it.

    python benchmarks/kernel_floor.py [--only SUBSTRING] [--out benchmarks/results/kernel_floor.json]

Needs an idle machine (the replays are timed). Settings and reference times as in flops.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from condense.runtime import tune_allocator

tune_allocator()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import algorithms  # noqa: E402
from algorithms.base import Context, config_from  # noqa: E402
from condense.data import load_dataset  # noqa: E402
from condense.models import build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from speed_mtt import RandomExperts  # noqa: E402

MATRIX_OPS = {"convolution", "_convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm"}


class _TensorSpec(tuple):
    """(shape, stride, dtype) of a tensor argument: enough to rebuild one like it."""


def _spec(a):
    if isinstance(a, torch.Tensor):
        return _TensorSpec((tuple(a.shape), tuple(a.stride()), a.dtype))
    if isinstance(a, (list, tuple)):
        return type(a)(_spec(b) for b in a)
    return a


def _build(s):
    if isinstance(s, _TensorSpec):
        shape, stride, dtype = s  # random storage of the needed extent, viewed with the recorded strides
        extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride) if n > 0) if all(shape) else 0
        return torch.randn(extent).to(dtype).as_strided(shape, stride)
    if isinstance(s, (list, tuple)):
        return type(s)(_build(b) for b in s)
    return s


class Recorder(TorchDispatchMode):
    """Counts the distinct matrix-kernel calls (operator + argument specs) of whatever runs inside."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()
        self.ops: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in MATRIX_OPS:
            key = (str(func), repr(_spec(args)), repr(_spec(kwargs)))
            self.calls[key] += 1
            self.ops[key] = (func, _spec(args), _spec(kwargs))
        return func(*args, **kwargs)


def fastest(func, args, kwargs, budget_s: float = 0.3, min_reps: int = 5) -> float:
    """Fastest of repeated calls of one kernel on fixed inputs, after two warm-up calls."""
    a, k = _build(args), _build(kwargs)
    with torch.no_grad():
        func(*a, **k)
        func(*a, **k)
        best, spent, reps = float("inf"), 0.0, 0
        while reps < min_reps or spent < budget_s:
            t0 = time.perf_counter()
            func(*a, **k)
            dt = time.perf_counter() - t0
            best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def floor_of(fn) -> dict:
    rec = Recorder()
    with rec:
        fn()
    total, calls = 0.0, 0
    per_op: Counter = Counter()
    for key, n in rec.calls.items():
        func, args, kwargs = rec.ops[key]
        t = fastest(func, args, kwargs)
        total += n * t
        calls += n
        per_op[func.overloadpacket.__name__] += n * t
    return {"floor_s": total, "calls": calls, "distinct_calls": len(rec.calls),
            "by_op_s": {k: round(v, 3) for k, v in per_op.most_common()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="run only the settings whose name contains this")
    ap.add_argument("--out", default=None)
    opts = ap.parse_args()
    torch.manual_seed(0)
    real = load_dataset("fashion-mnist")

    def algo_step(name: str, values: dict):
        cls = algorithms.ALGORITHMS.get(name)
        a = cls(config_from(cls, {"iters": 2, **values}), real, Context(seed=0, artifacts=RandomExperts()))
        a.init()
        a.step(0)  # warm: the recorded step is a steady one
        return lambda: a.step(1)

    def train_step(batch: int, layout=torch.contiguous_format):
        net = build_model("convnet", 1, 10, 28, seed=0).to(memory_format=layout)
        x, y = torch.randn(batch, 1, 28, 28).contiguous(memory_format=layout), torch.randint(0, 10, (batch,))
        return lambda: F.cross_entropy(net(x), y).backward()

    mtt = {"num_experts": 2, "max_start_epoch": 2, "expert_epochs": 2}
    settings = [  # (issue, name, step function, times per unit, reference s, target ratio)
        (5, "MTT IPC 1, N=50, unroll", lambda: algo_step("mtt", {"ipc": 1, "syn_steps": 50, "memory": "unroll", **mtt}), 1, 2.7, 0.5),
        (5, "MTT IPC 1, N=50, recompute", lambda: algo_step("mtt", {"ipc": 1, "syn_steps": 50, "memory": "recompute", **mtt}), 1, 2.7, 0.75),
        (5, "MTT IPC 10, N=30, unroll", lambda: algo_step("mtt", {"ipc": 10, "syn_steps": 30, "memory": "unroll", **mtt}), 1, 34.0, 0.5),
        (5, "MTT IPC 10, N=30, recompute", lambda: algo_step("mtt", {"ipc": 10, "syn_steps": 30, "memory": "recompute", **mtt}), 1, 34.0, 0.75),
        (5, "expert epoch (60k images, batch 256)", lambda: train_step(256), 60000 / 256, 135.0, 0.5),
        (5, "expert epoch, channels-last kernels", lambda: train_step(256, torch.channels_last), 60000 / 256, 135.0, 0.5),
        (4, "DM IPC 1, batch_real 256", lambda: algo_step("dm", {"ipc": 1, "compile": False}), 1, 1.9, 0.5),
        (4, "DM IPC 10, batch_real 256", lambda: algo_step("dm", {"ipc": 10, "compile": False}), 1, 2.3, 0.5),
    ]
    rows = []
    for issue, name, make, times, reference, ratio in settings:
        if opts.only not in name:
            continue
        r = floor_of(make())
        floor = r["floor_s"] * times
        target = reference * ratio
        rows.append({"issue": issue, "setting": name, "kernel_floor_s": round(floor, 3), "target_s": round(target, 3),
                     "floor_over_target": round(floor / target, 2), "calls_per_step": r["calls"],
                     "distinct_calls": r["distinct_calls"],
                     "by_op_s": {k: round(v * times, 3) for k, v in r["by_op_s"].items()}})
        print(json.dumps(rows[-1]), flush=True)
    if opts.out:
        Path(opts.out).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
