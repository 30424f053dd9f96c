"""The interruption drill: every method is killed at random moments (SIGKILL, as a crashed or
preempted node; SIGTERM, as a batch scheduler), resumed with `--resume` until it finishes, and the
final file is compared with an uninterrupted run of the same command: the images must be identical.

    python benchmarks/drill.py [--kills 3] [--seed 0] [--out benchmarks/results/studies/drill.jsonl]

Real Fashion-MNIST, the `condense` executable, a checkpoint every iteration, small settings (a run
takes seconds). Needs what the methods need cached or builds it first: herding's and k-center's
embedding network (1 epoch), NCFM's one-network pool,
two MTT experts of 2 epochs, INFER's `cpu` committee (`condense teachers --committee cpu`, about
35 minutes the first time). One JSON line per method and signal.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = {
    "random": ["--ipc", "2"],
    "herding": ["--ipc", "2", "--set", "embed_epochs=1"],
    "kcenter": ["--ipc", "2", "--set", "embed_epochs=1"],
    "dm": ["--ipc", "1", "--iters", "20", "--set", "batch_real=32"],
    "datadam": ["--ipc", "1", "--iters", "20", "--set", "batch_real=16"],
    "ncfm": ["--ipc", "1", "--iters", "8", "--preset", "quick", "--set", "num_freqs=64", "--set", "batch_real=64"],
    "mtt": ["--ipc", "1", "--iters", "10", "--set", "num_experts=2", "--set", "syn_steps=5", "--set", "expert_epochs=1",
            "--set", "max_start_epoch=1"],
    "infer": ["--ipc", "2", "--preset", "cpu", "--set", "ufc_iters=10"],
}


def distill(method: str, out: Path, resume: bool) -> subprocess.Popen:
    cmd = ["condense", "distill", "--algo", method, *METHODS[method], "--out", str(out), "--ckpt-every", "1",
           "--quiet", *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def interrupted(method: str, out: Path, sig: int, kills: int, rng: random.Random, ref_seconds: float) -> dict:
    """Run to the end, sending `sig` `kills` times at random moments, resuming after each (a run that
    finishes before its signal is started again from scratch, so every signal lands)."""
    sent, resumed = 0, 0
    while True:
        ckpt = Path(str(out) + ".ckpt")
        proc = distill(method, out, resume=ckpt.is_file())
        resumed += ckpt.is_file()
        if sent < kills:
            time.sleep(rng.uniform(0.2, 0.8) * ref_seconds)
            if proc.poll() is None:
                proc.send_signal(sig)
                sent += 1
        _, err = proc.communicate()
        if proc.returncode == 0 and out.is_file():
            if sent == kills:
                return {"signals_sent": sent, "resumes": resumed}
            out.unlink()  # it finished before the signal: once more, from the start
            continue
        if proc.returncode not in (130, -signal.SIGKILL, -signal.SIGTERM, 1):  # SIGTERM before the run started
            raise SystemExit(f"{method}: unexpected exit {proc.returncode}: {err[-1500:]}")
        if proc.returncode == 1 and "Another condense process" not in err and "--resume" not in err:
            raise SystemExit(f"{method}: failed: {err[-1500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "studies" / "drill.jsonl")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    import condense

    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            ref = Path(tmp) / f"{method}-ref.h5"
            for attempt in range(2):  # the first run may build what the method needs (a pool, experts): time the second
                t0 = time.time()
                ref.unlink(missing_ok=True)
                proc = distill(method, ref, resume=False)
                _, err = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"{method}: the uninterrupted run failed: {err[-1500:]}")
            seconds = time.time() - t0
            reference = condense.load(ref).images
            for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
                out = Path(tmp) / f"{method}-{name}.h5"
                row = {"method": method, "signal": name, "uninterrupted_s": round(seconds, 1),
                       **interrupted(method, out, sig, args.kills, rng, seconds)}
                got = condense.load(out).images
                row["identical"] = bool(torch.equal(got, reference))
                row["leftover_files"] = sorted(p.name for p in Path(tmp).iterdir() if p.name.startswith(f".{method}-{name}"))
                line = json.dumps(row)
                print(line, flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(line + "\n")
                if not row["identical"]:
                    sys.exit(f"{method} after {name}: the resumed file differs from the uninterrupted one")


if __name__ == "__main__":
    main()
