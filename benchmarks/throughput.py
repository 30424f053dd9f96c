"""ConvNet-3 throughput on this machine: training (forward + backward + SGD step) and
forward-only images per second on Fashion-MNIST-shaped batches, plus the rate of one large
convolution as a reference peak. Later speed work compares against these numbers.

    python benchmarks/throughput.py [--no-tune] [--out benchmarks/results/throughput.json]

--no-tune skips the allocator tuning (condense.runtime.tune_allocator), to show its effect.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

ap = argparse.ArgumentParser()
ap.add_argument("--no-tune", action="store_true")
ap.add_argument("--out", default=None)
ap.add_argument("--seconds", type=float, default=15.0, help="time budget per measurement")
args = ap.parse_args()

from condense.runtime import tune_allocator  # noqa: E402

tuned = False if args.no_tune else tune_allocator()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from condense.models import build_model  # noqa: E402


def rate(fn, per_call: int, budget: float) -> dict:
    for _ in range(2):
        fn()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget:
        fn()
        n += 1
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"per_s": per_call * n / dt, "calls": n, "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime}


results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
           "allocator_tuned": tuned, "rows": []}
for batch in (256, 100):
    net = build_model("convnet", 1, 10, 28, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    def forward():
        with torch.no_grad():
            net(x)

    results["rows"].append({"what": "convnet3 train step", "batch": batch, **rate(train_step, batch, args.seconds)})
    results["rows"].append({"what": "convnet3 forward (no grad)", "batch": batch, **rate(forward, batch, args.seconds)})

# reference: the dominant convolution of ConvNet-3 (128 -> 128 channels, 3x3, 16x16 maps), forward only
w = torch.randn(128, 128, 3, 3)
z = torch.randn(256, 128, 16, 16)
flops = 2 * 256 * 128 * 128 * 9 * 16 * 16


def conv():
    with torch.no_grad():
        F.conv2d(z, w, padding=1)


r = rate(conv, 1, args.seconds)
results["rows"].append({"what": "single conv 128->128 3x3 @16x16, batch 256", "gflop_per_s": flops * r["per_s"] / 1e9,
                        **r})
text = json.dumps(results, indent=2)
print(text)
if args.out:
    with open(args.out, "w") as f:
        f.write(text + "\n")
