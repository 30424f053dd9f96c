"""DD-Ranking scores (HLR, IOR, LRS; fractions, see evaluators/metrics.py) for every set in the
given result JSONs, from accuracies already measured under one protocol: each JSON's rows, its random
baseline rows (any JSON may hold them), and the whole-data accuracy of the same architecture.

    python benchmarks/scores.py --full-acc 93.30 benchmarks/results/baselines-ipc{1,10}.json \
        benchmarks/results/ncfm-ipc{1,10}.json > benchmarks/results/scores.md
"""
from __future__ import annotations

import argparse
import json

from evaluators.metrics import hlr, ior, lrs

ap = argparse.ArgumentParser()
ap.add_argument("--full-acc", type=float, required=True, help="whole-data test accuracy, percent")
ap.add_argument("files", nargs="+")
args = ap.parse_args()
full = args.full_acc / 100
rows, protocols = [], set()
for path in args.files:
    doc = json.load(open(path))
    protocols.add((doc["protocol"]["name"], doc["protocol"]["hash"]))
    for r in doc["rows"]:
        for a in r["results"]:
            rows.append((r["method"], r["ipc"], a["arch"], a["mean"], a["std"], len(a["accs"]), r["source"], path))
if len(protocols) != 1:
    raise SystemExit(f"the files mix protocols {sorted(protocols)}; scores compare like with like only")
base = {(ipc, arch): mean for m, ipc, arch, mean, *_ in rows if m.startswith("random")}
name, digest = protocols.pop()
print(f"DD-Ranking scores under protocol {name} [{digest}], full-data accuracy {args.full_acc:.2f}%\n")
print("| method | IPC | arch | acc (%) | HLR | IOR | LRS | result file |")
print("|---|---|---|---|---|---|---|---|")
for m, ipc, arch, mean, std, n, source, path in sorted(rows, key=lambda r: (r[1], r[0])):
    h = hlr(full, mean)
    i = ior(mean, base[(ipc, arch)]) if (ipc, arch) in base else float("nan")
    score = f"{lrs(i, h):.3f}" if i == i else "—"
    print(f"| {m} | {ipc} | {arch} | {100 * mean:.1f} ± {100 * std:.1f} (n={n}) | {h:+.3f} | {i:+.3f} | {score} | "
          f"`{path.split('/')[-1]}` |")
