"""Large datasets: peak memory of DM on a generated ImageNet-like JPEG tree read lazily vs in memory,
decode throughput by worker count and where the time goes, and a class-order mismatch refused then
evaluated with --class-map.

    python benchmarks/lazydata.py tree [--root DIR]          # (default: condense-lazydata in the temp folder) 100 classes x 500 JPEGs (about 2 min, 0.3 GB)
    python benchmarks/lazydata.py memory [--root DIR]        # DM, 3 iterations, lazy and in memory (one process each)
    python benchmarks/lazydata.py throughput [--root DIR]    # decode rate with 0, 1, 2 workers + a breakdown
    python benchmarks/lazydata.py classmap [--root DIR]      # Fashion-MNIST as two folders in two class orders

Rows are JSON lines appended to benchmarks/results/studies/lazydata.jsonl (with the machine); the class-map
transcript goes to benchmarks/results/studies/lazydata-classmap.txt. Run nothing else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "studies"
sys.path.insert(0, str(HERE))
from speed import machine  # noqa: E402

CLASSES, PER_CLASS, VAL = 100, 500, 10


def log(row: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    row = {**row, "machine": machine()}
    with open(OUT / "lazydata.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def make_tree(root: Path) -> None:
    """ImageNet-like files: JPEGs of 80-160 px a side (smooth content, so about 3-6 KB each as photos
    compress), wnid-style class folders, a val split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    t0, n = time.time(), 0
    for split, k in (("train", PER_CLASS), ("val", VAL)):
        for c in range(CLASSES):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                w, h = (int(v) for v in rng.integers(80, 161, 2))
                small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
                small.resize((w, h), Image.Resampling.BICUBIC).save(d / f"n{c:08d}_{i}.JPEG", quality=85)
                n += 1
    past = time.time() - 60
    for here, _, _ in os.walk(root):
        os.utime(here, (past, past))
    size = sum(p.stat().st_size for p in root.rglob("*.JPEG"))
    log({"study": "tree", "files": n, "bytes": size, "seconds": round(time.time() - t0, 1)})


def distill_child(root: Path, lazy: bool, iters: int) -> None:
    """One DM distillation (in this process), then its peak memory as a JSON line."""
    from condense.cli import _distill_one
    from condense.data import load_dataset
    from condense.progress import Reporter
    from condense.runtime import tune_process

    tune_process()
    t0 = time.time()
    real = load_dataset(f"imagefolder:{root}@64", lazy=lazy)
    loaded, rss_loaded = time.time() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t1 = time.time()
    _distill_one("dm", 10, real, root.parent / f"dm-{'lazy' if lazy else 'memory'}.h5", None,
                 {"batch_real": "64"}, iters, 0, None, Reporter())
    print(json.dumps({"lazy": lazy, "load_seconds": round(loaded, 1), "peak_after_load_mb": rss_loaded // 1024,
                      "distill_seconds": round(time.time() - t1, 1), "iters": iters,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def memory(root: Path, iters: int = 3) -> None:
    """Each path in a process of its own (ru_maxrss is per process)."""
    for lazy in (True, False):
        p = subprocess.run([sys.executable, __file__, "_distill", "--root", str(root), "--iters", str(iters)]
                           + (["--lazy"] if lazy else []), capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr[-3000:])
        row = json.loads(p.stdout.strip().splitlines()[-1])
        log({"study": "memory", "command": "dm ipc 10, batch_real 64 per class, 100 classes, 64 px", **row})


def throughput(root: Path, batches: int = 8, batch: int = 256) -> None:
    """Decoded images per second drawing random batches (as a method does), and one thread's time split
    into opening + decoding (draft to the smallest JPEG scale >= 64 px), resize + crop, and to-tensor."""
    import numpy as np
    import torch
    from PIL import Image

    from condense.data import load_dataset
    from condense.runtime import make_generator

    for workers in (0, 1, 2):
        real = load_dataset(f"imagefolder:{root}@64", lazy=True, workers=workers)
        g = make_generator(0)
        real.train.images[torch.arange(batch)]  # warm-up: threads started, files in the page cache or not
        t0 = time.time()
        for _ in range(batches):
            real.get(torch.randint(len(real.train.labels), (batch,), generator=g))
        rate = batches * batch / (time.time() - t0)
        log({"study": "throughput", "workers": workers, "images": batches * batch, "images_per_second": round(rate)})
    files = [real.train.images.path(i) for i in range(0, len(real.train.labels), 100)][:500]
    parts = {"open+decode": 0.0, "resize+crop": 0.0, "to tensor": 0.0}
    for p in files:
        t = time.perf_counter()
        with Image.open(p) as img:
            img.draft("RGB", (64, 64))
            img = img.convert("RGB")
        t2 = time.perf_counter()
        s = 64 / min(img.size)
        img = img.resize((max(64, round(img.size[0] * s)), max(64, round(img.size[1] * s))), Image.Resampling.BILINEAR)
        left, top = (img.size[0] - 64) // 2, (img.size[1] - 64) // 2
        img = img.crop((left, top, left + 64, top + 64))
        t3 = time.perf_counter()
        torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        t4 = time.perf_counter()
        parts["open+decode"] += t2 - t
        parts["resize+crop"] += t3 - t2
        parts["to tensor"] += t4 - t3
    log({"study": "breakdown", "files": len(files), "ms_per_image": {k: round(1000 * v / len(files), 3)
                                                                       for k, v in parts.items()}})


def classmap(root: Path) -> None:
    """Fashion-MNIST written as an image folder twice, with class folders that sort in two different
    orders; a DM set distilled on the first is refused on the second, then evaluated with --class-map,
    and the numbers compared with the evaluation on the first."""
    import numpy as np
    from PIL import Image

    from condense.data import load_dataset

    fm = load_dataset("fashion-mnist")
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    a, b = root / "fmnist-a", root / "fmnist-b"
    for folder, name_of in ((a, lambda c: f"{c}_{names[c]}"), (b, lambda c: names[c])):  # b sorts alphabetically
        for split, data in (("train", fm.train), ("val", fm.test)):
            for c in range(10):
                (folder / split / name_of(c)).mkdir(parents=True, exist_ok=True)
            for i, (x, y) in enumerate(zip(data.images.numpy(), data.labels.tolist())):
                Image.fromarray(x[0]).save(folder / split / name_of(y) / f"{i}.png")
    lines = []

    def run(*args: str) -> None:
        cmd = ["condense", *args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines.append(f"$ {' '.join(cmd)}\n(exit {p.returncode})\n{p.stdout}{p.stderr}")
        print(lines[-1])

    out = root / "dm-fmnist-a.h5"
    run("distill", "--algo", "dm", "--ipc", "10", "--preset", "cpu", "--iters", "100", "--dataset",
        f"imagefolder:{a}", "--out", str(out), "--quiet")
    run("eval", str(out), "--runs", "1", "--epochs", "300", "--quiet")
    run("eval", str(out), "--dataset", f"imagefolder:{b}", "--runs", "1", "--epochs", "300", "--quiet")
    cmap = root / "classmap.json"
    cmap.write_text(json.dumps({f"{c}_{names[c]}": names[c] for c in range(10)}, indent=1))
    lines.append(f"$ cat {cmap}\n{cmap.read_text()}\n")
    run("eval", str(out), "--dataset", f"imagefolder:{b}", "--class-map", str(cmap), "--runs", "1", "--epochs", "300", "--quiet")
    text = "\n".join(lines).replace(str(root), "$ROOT")
    (OUT / "lazydata-classmap.txt").write_text(text)
    del np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=["tree", "memory", "throughput", "classmap", "_distill"])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "condense-lazydata")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--lazy", action="store_true")
    args = ap.parse_args()
    tree = args.root / "tree"
    if args.study == "tree":
        make_tree(tree)
    elif args.study == "memory":
        memory(args.root, args.iters)
    elif args.study == "throughput":
        throughput(tree)
    elif args.study == "classmap":
        classmap(args.root)
    else:
        distill_child(tree, args.lazy, args.iters)


if __name__ == "__main__":
    main()
