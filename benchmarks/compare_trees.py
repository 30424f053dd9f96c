"""Compare this source tree with another (an older commit checked out with `git worktree add`).

    git worktree add /tmp/before 464a447
    python benchmarks/compare_trees.py sets /tmp/before           # same seed, same set?
    python benchmarks/compare_trees.py speed /tmp/before [SUITE ...]   # speed rows, alternating

`sets` runs a few steps of DM, DataDAM, NCFM and MTT in each tree (each in a process of its own, on
Fashion-MNIST, seed 0) and prints, per method, whether the images are bit-identical and their
largest difference. A refactor that claims "same seed, same set" is checked with it.

`speed` measures every configuration of `benchmarks/speed.py`'s suites in the other tree and in this
one (fast paths on and off), alternating per configuration so that drift of the machine falls on
all alike; rows go to benchmarks/results/speed/compare.jsonl with a `variant` field. Trees from
before `speed.py` existed are driven through their own scripts (speed_matching.py, speed_mtt.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS = HERE.parent

STEPS = {  # method -> settings of a few cheap steps (NCFM: an untrained one-network pool, built on the fly)
    "dm": {"ipc": 2, "iters": 3, "batch_real": 32},
    "datadam": {"ipc": 2, "iters": 3, "batch_real": 16},
    "ncfm": {"ipc": 1, "iters": 2, "batch_real": 32, "pool_size": 1, "pool_epochs": 0, "num_freqs": 64},
    "mtt": {"ipc": 1, "iters": 2, "num_experts": 1, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1},
}
_CHILD = """
import sys, torch
import algorithms
from algorithms.base import Context, config_from
from condense.artifacts import Artifacts
from condense.data import load_dataset
real = load_dataset("fashion-mnist")
name, values, cache, out = sys.argv[1], eval(sys.argv[2]), sys.argv[3], sys.argv[4]
cls = algorithms.ALGORITHMS.get(name)
a = cls(config_from(cls, values), real, Context(seed=0, artifacts=Artifacts(cache)))
a.init()
for i in range(values["iters"]):
    a.step(i)
torch.save(a.images.detach().cpu(), out)
"""


def _env(tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(tree)
    return env


def same_sets(other: Path) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        for name, values in STEPS.items():
            images = []
            for tree in (other, THIS):
                out = f"{tmp}/{name}-{tree.name}.pt"
                subprocess.run([sys.executable, "-c", _CHILD, name, repr(values), f"{tmp}/cache", out],
                               env=_env(tree), check=True, capture_output=True, cwd=tmp)
                images.append(torch.load(out))
            a, b = images
            print(json.dumps({"method": name, "identical": bool(torch.equal(a, b)),
                              "max_abs_diff": float((a - b).abs().max()), "max_abs": float(a.abs().max())}))


LEGACY = {  # speed.py's arguments -> the script and arguments of trees from before speed.py
    "dm": "speed_matching.py", "datadam": "speed_matching.py", "ncfm": "speed_matching.py", "mtt": "speed_mtt.py"}


def _legacy_args(args: list[str]) -> list[str]:
    algo, ipc, iters, *rest = args
    if algo != "mtt":
        return [LEGACY[algo], algo, ipc, iters, *rest]
    settings = dict(a.split("=", 1) for a in rest)
    return [LEGACY[algo], ipc, settings.pop("syn_steps"), settings.pop("memory"), iters]


def speed(other: Path, suites: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    from speed import SUITES, machine

    out = HERE / "results" / "speed" / "compare.jsonl"
    fingerprint = machine()

    def run(cmd: list[str], env: dict, variant: str, suite: str, config: str) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            sys.exit(f"{suite}/{config} ({variant}) failed:\n{res.stderr[-2000:]}")
        row = {"suite": suite, "config": config, "variant": variant, **json.loads(res.stdout.strip().splitlines()[-1])}
        row.setdefault("machine", {**fingerprint, "commit": other.name})
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")

    for suite in suites or [s for s in SUITES if s not in ("train", "eval")]:
        for config, args in SUITES[suite].items():
            if (other / "benchmarks" / "speed.py").is_file():
                theirs = [sys.executable, str(other / "benchmarks" / "speed.py"), "one", *args]
            else:
                script, *rest = _legacy_args(args)
                theirs = [sys.executable, str(other / "benchmarks" / script), *rest]
            run(theirs, _env(other), "before", suite, config)
            for switch in ("true", "false"):
                run([sys.executable, str(HERE / "speed.py"), "one", *args, f"fast={switch}"], _env(THIS),
                    f"after-fast-{'on' if switch == 'true' else 'off'}", suite, config)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("sets", "speed"):
        sys.exit(__doc__)
    if sys.argv[1] == "sets":
        same_sets(Path(sys.argv[2]).resolve())
    else:
        speed(Path(sys.argv[2]).resolve(), sys.argv[3:])
