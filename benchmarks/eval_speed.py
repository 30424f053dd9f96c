"""Evaluation speed (issue 6): 5 runs x IPC 10 x 200 epochs on Fashion-MNIST, the runs trained
together (`ConvNetStack`) vs a plain per-run loop, in one process, eager and compiled; and the
ConvNet-3 training rate in GFLOP/s against the peak of one large convolution on this machine.

    python benchmarks/eval_speed.py [--epochs 200] [--eager-only] [--out benchmarks/results/eval_speed.json]

Each configuration is a full `evaluate_set` (training plus the final pass over the 10 000 test
images), timed with wall clock and the process's user/sys CPU time.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=200)
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--ipc", type=int, default=10)
ap.add_argument("--seconds", type=float, default=15.0, help="time budget of each rate measurement")
ap.add_argument("--out", default=None)
ap.add_argument("--eager-only", action="store_true", help="skip the two compiled configurations (halves the time)")
args = ap.parse_args()

from condense.runtime import make_generator, tune_allocator  # noqa: E402

tune_allocator()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from condense.data import load_dataset  # noqa: E402
from condense.models import ConvNetStack, build_model  # noqa: E402
from condense.synthetic import SetMeta, SyntheticSet  # noqa: E402
from evaluators.protocols import get_protocol  # noqa: E402
from evaluators.retrain import EvalSettings, evaluate_set  # noqa: E402


def timed(fn) -> tuple[object, dict]:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return out, {"wall_s": round(dt, 2), "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                 "sys_s": round(r1.ru_stime - r0.ru_stime, 2)}


def rate(fn, budget: float) -> float:
    """Calls per second of fn over about `budget` seconds (after two warm-up calls)."""
    fn(), fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


real = load_dataset("fashion-mnist")
info = real.info
x, y = real.random_subset(args.ipc, make_generator(0))
synth = SyntheticSet(x, y, SetMeta(info.name, info.num_classes, info.class_names, args.ipc, info.channels, info.size,
                                   info.size, info.mean, info.std, algorithm="random"))
proto = get_protocol("dsa").with_epochs(args.epochs)
results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": args.runs,
                 "ipc": args.ipc, "epochs": args.epochs, "configs": []}
for compile in (False,) if args.eager_only else (False, True):
    for stack in (False, True):
        settings = EvalSettings(proto, ["convnet"], args.runs, seed=0, compile=compile, stack=stack)
        res, t = timed(lambda: evaluate_set(synth, real, settings)[0])
        row = {"stack": stack, "compile": compile, **t, "accs": [round(a, 4) for a in res.accs]}
        results["configs"].append(row)
        print(json.dumps(row), flush=True)
by = {(r["compile"], r["stack"]): r["wall_s"] for r in results["configs"]}
results["ratio_stack_vs_loop_eager"] = round(by[(False, True)] / by[(False, False)], 3)
if not args.eager_only:
    results["ratio_stack_vs_loop_compiled"] = round(by[(True, True)] / by[(True, False)], 3)
results["ratio_best_vs_plain_eager_loop"] = round(min(by.values()) / by[(False, False)], 3)

# ConvNet-3 training rate (forward + backward + SGD step, batch 256) in conv GFLOP/s vs one big conv.
side, layers = 32, []  # 28-px inputs are padded to 32 by the first convolution
cin = 1
for _ in range(3):
    layers.append(2 * cin * 128 * 9 * side * side)
    cin, side = 128, side // 2
train_flops = 3 * sum(layers) - layers[0]  # backward = input grads (not for the first layer) + weight grads
batch = 256
xb, yb = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
net = build_model("convnet", 1, 10, 28, seed=0)
stack = ConvNetStack([build_model("convnet", 1, 10, 28, seed=s) for s in range(args.runs)])
for name, model, inp, runs in (("convnet3 train step", net, xb, 1),
                               (f"stack of {args.runs} convnet3, train step", stack,
                                xb[:batch // args.runs].expand(args.runs, -1, -1, -1, -1), args.runs)):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = yb[:inp.shape[-4]] if runs == 1 else yb[:batch // args.runs].repeat(runs)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inp).reshape(-1, 10), labels).backward()
        opt.step()

    images = inp.shape[0] if runs == 1 else runs * inp.shape[1]
    per_s = rate(step, args.seconds) * images
    results[name] = {"images_per_s": round(per_s, 1), "gflop_per_s": round(per_s * train_flops / 1e9, 1)}
w, z = torch.randn(128, 128, 3, 3), torch.randn(256, 128, 16, 16)
peak = rate(lambda: F.conv2d(z, w, padding=1), args.seconds) * 2 * 256 * 128 * 128 * 9 * 16 * 16 / 1e9
results["single conv peak gflop_per_s"] = round(peak, 1)
for k in list(results):
    if isinstance(results[k], dict) and "gflop_per_s" in results[k]:
        results[k]["fraction_of_peak"] = round(results[k]["gflop_per_s"] / peak, 3)
text = json.dumps(results, indent=2)
print(text)
if args.out:
    with open(args.out, "w") as f:
        f.write(text + "\n")
