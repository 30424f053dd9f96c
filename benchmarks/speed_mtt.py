"""Trajectory matching: seconds per iteration and peak memory of `unroll` vs `recompute`, one fresh
process per setting (so peak RSS belongs to that setting), on Fashion-MNIST with ConvNet-3.

    python benchmarks/speed_mtt.py IPC SYN_STEPS MEMORY [ITERS] [key=value ...] [--warmup K] [--json-out FILE]
    for n in 10 20 40; do for m in unroll recompute; do
        python benchmarks/speed_mtt.py 10 $n $m --json-out benchmarks/results/speed_mtt.jsonl; done; done

The cost of an iteration does not depend on the experts' values, so the expert trajectories here are
random parameter vectors of the right shape (no hour of expert training needed; the same reasoning as
the untrained pool of the NCFM speed benchmark). Everything else is the real `MTT.step`: N student
steps on the whole synthetic set (batch_syn = IPC x classes, MTT's default), DSA per sample, the
normalized distance to the expert and the updates of the images and of the step size.
"""
from __future__ import annotations

import sys

from condense import runtime

runtime.tune_allocator()

import torch  # noqa: E402

import algorithms  # noqa: E402
from algorithms.base import Context, config_from  # noqa: E402
from condense.artifacts import Artifacts  # noqa: E402
from condense.data import load_dataset  # noqa: E402
from condense.models import FlatParams, build_model  # noqa: E402
from speed_matching import measure  # noqa: E402  (same folder: the script's own directory is on sys.path)


class RandomExperts(Artifacts):
    """Expert trajectories of the right shape with random values (speed does not depend on them)."""

    def expert(self, real, arch, recipe, index):  # type: ignore[override]
        net = build_model(arch, real.info.channels, real.info.num_classes, real.info.size, seed=index)
        start = FlatParams(net).flatten(net)
        g = torch.Generator().manual_seed(index)
        steps = torch.randn(recipe.epochs, start.numel(), generator=g) * 1e-3
        return torch.cat([start[None], start[None] + steps.cumsum(0)])


def main() -> None:
    argv, opts, args = sys.argv[1:], {}, []
    while argv:
        a = argv.pop(0)
        if a.startswith("--"):
            opts[a] = argv.pop(0)  # --json-out FILE, --warmup K
        else:
            args.append(a)
    out, warmup = opts.get("--json-out"), int(opts.get("--warmup", 1))
    ipc, n, memory = int(args[0]), int(args[1]), args[2]
    iters = int(args[3]) if len(args) > 3 and "=" not in args[3] else 4
    over = dict(a.split("=", 1) for a in args[3:] if "=" in a)
    real = load_dataset("fashion-mnist")
    cls = algorithms.ALGORITHMS.get("mtt")
    values = {"ipc": ipc, "iters": iters, "syn_steps": n, "memory": memory, "num_experts": 2, "max_start_epoch": 2,
              "expert_epochs": 2, **over}
    a = cls(config_from(cls, values), real, Context(seed=0, artifacts=RandomExperts()))
    runtime.restartable = True  # as the CLI does: unroll on the CPU re-runs itself with huge pages
    if a.wants_huge_pages():
        runtime.restart_with_huge_pages(print)
    measure(a, iters, {"algo": "mtt", "ipc": ipc, "syn_steps": n, "memory": memory, "settings": over,
                       "huge_pages": runtime.huge_pages_on()}, out, warmup)

if __name__ == "__main__":
    main()
    runtime.exit_now(0)  # as the condense executable ends: peak RSS as /usr/bin/time sees it = the reported one
