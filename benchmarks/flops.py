"""How fast can a setting possibly run on this machine? Counts the convolution and matmul FLOPs of
one iteration of every setting with a time target in issues 4-6 (torch's FlopCounterMode, forward,
backward and double backward included; elementwise work is not counted, so the bound is generous)
and divides by the machine's peak: the rate of one large convolution measured by
benchmarks/eval_speed.py or, with --measure, the fastest of that, a 4096^3 matmul and ConvNet-3's
middle convolution at batch 16, timed now. The ratio
"needs" = FLOPs / (target time x peak) is the fraction of the peak the whole iteration would have to
sustain to meet its target; above 1.0 the target cannot be met on this CPU in float32.

    python benchmarks/flops.py [--measure] [--peak GFLOP_PER_S] [--out benchmarks/results/flops.json]

Without --peak, the peak (and the plain loop's time, issue 6's reference) is read from
benchmarks/results/eval_speed_200ep_eager.json. Counting runs
each setting once (a few minutes in all); the numbers do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import algorithms
from algorithms.base import Context, config_from
from condense.data import load_dataset
from condense.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from speed_mtt import RandomExperts  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--peak", type=float, default=None, help="GFLOP/s of one large convolution (default: measured file)")
ap.add_argument("--measure", action="store_true",
                help="also time a 4096x4096 matmul and ConvNet-3's middle convolution at batch 16, and use the "
                     "fastest rate seen (needs an idle machine)")
ap.add_argument("--out", default=None)
args = ap.parse_args()
speed = json.loads(Path("benchmarks/results/eval_speed_200ep_eager.json").read_text())
peak = args.peak or speed["single conv peak gflop_per_s"]
rates = {"conv 128->128 @16x16, batch 256 (eval_speed.py)": peak}


def gflops(fn, flop: float, seconds: float = 5.0) -> float:
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return flop * n / (time.perf_counter() - t0) / 1e9


if args.measure:
    from condense.runtime import tune_allocator

    tune_allocator()
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    z, w = torch.randn(16, 128, 16, 16), torch.randn(128, 128, 3, 3)
    with torch.no_grad():
        rates["matmul 4096^3"] = gflops(lambda: a @ b, 2 * 4096**3)
        rates["conv 128->128 @16x16, batch 16"] = gflops(lambda: F.conv2d(z, w, padding=1), 2 * 16 * 128 * 128 * 9 * 256)
    peak = max(rates.values())
print(json.dumps({"rates_gflop_per_s": {k: round(v, 1) for k, v in rates.items()}, "peak_used": round(peak, 1)}))
loop_s = next(c["wall_s"] for c in speed["configs"] if not c["stack"] and not c["compile"])  # measured plain loop
torch.manual_seed(0)
real = load_dataset("fashion-mnist")


def count(fn) -> float:
    with FlopCounterMode(display=False) as m:
        fn()
    return float(m.get_total_flops())


def algo_step_flops(name: str, values: dict, artifacts=None) -> float:
    cls = algorithms.ALGORITHMS.get(name)
    a = cls(config_from(cls, {"iters": 2, **values}), real, Context(seed=0, artifacts=artifacts or RandomExperts()))
    a.init()
    return count(lambda: a.step(0))


def train_step_flops(batch: int) -> float:
    net = build_model("convnet", 1, 10, 28, seed=0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return count(lambda: F.cross_entropy(net(x), y).backward())


def forward_flops(batch: int) -> float:
    net = build_model("convnet", 1, 10, 28, seed=0)
    with torch.no_grad():
        return count(lambda: net(torch.randn(batch, 1, 28, 28)))


rows = []


def row(issue: int, setting: str, flops: float, reference_s: float, target_ratio: float) -> None:
    """reference_s: the original implementation's time here as the issue states it (issue 6: our plain
    per-run loop, measured by eval_speed.py)."""
    target = reference_s * target_ratio
    floor = flops / (peak * 1e9)
    rows.append({"issue": issue, "setting": setting, "gflop": round(flops / 1e9, 1), "reference_s": reference_s,
                 "target_s": round(target, 3), "floor_s_at_peak": round(floor, 3),
                 "needs_fraction_of_peak": round(floor / target, 2)})
    print(json.dumps(rows[-1]), flush=True)


mtt = {"num_experts": 2, "max_start_epoch": 2, "expert_epochs": 2}
for mem, ratio in (("unroll", 0.5), ("recompute", 0.75)):
    f = algo_step_flops("mtt", {"ipc": 1, "syn_steps": 50, "memory": mem, **mtt})
    row(5, f"MTT IPC 1, N=50, {mem}", f, 2.7, ratio)
for mem, ratio in (("unroll", 0.5), ("recompute", 0.75)):
    f = algo_step_flops("mtt", {"ipc": 10, "syn_steps": 30, "memory": mem, **mtt})
    row(5, f"MTT IPC 10, N=30, {mem}", f, 34.0, ratio)
epoch = train_step_flops(256) * 60000 / 256
row(5, "expert epoch (60k images, batch 256)", epoch, 135.0, 0.5)
for ipc, ref in ((1, 1.9), (10, 2.3)):
    row(4, f"DM IPC {ipc}, batch_real 256", algo_step_flops("dm", {"ipc": ipc}), ref, 0.5)
for ipc, ref in ((1, 1.3), (10, 1.7)):
    row(4, f"DataDAM IPC {ipc}, batch_real 64", algo_step_flops("datadam", {"ipc": ipc}), ref, 0.5)
# issue 6: 5 runs x 200 epochs x 100 images of training plus one pass over the 10k test images per run;
# stacking does the same arithmetic as the loop, so its floor is the loop's floor
evaluation = 5 * (200 * train_step_flops(100) + 10 * forward_flops(1000))
row(6, "5 runs x IPC 10 x 200 epochs, stacked (target 0.33x the plain loop)", evaluation, loop_s, 0.33)
result = {"peak_gflop_per_s": round(peak, 1), "rates_gflop_per_s": {k: round(v, 1) for k, v in rates.items()},
          "threads": torch.get_num_threads(), "rows": rows}
if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
