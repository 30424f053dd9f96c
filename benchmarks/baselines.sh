#!/usr/bin/env bash
# Issue 2 measurements: selection baselines and the random-subset baseline on Fashion-MNIST,
# ConvNet-3, default protocol (dsa: 5 runs x 1000 epochs, final epoch); whole-data ConvNet-3.
# Run by hand from the repository root: bash benchmarks/baselines.sh   (about 2 hours on 2 cores)
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
mkdir -p "$out" "$sets"
T="/usr/bin/time -f %e_s_wall_%U_s_user_%S_s_sys_%M_KB_maxrss"
for ipc in 1 10; do
  for algo in random herding kcenter; do
    $T condense distill --algo $algo --ipc $ipc --out "$sets/$algo-ipc$ipc.h5" --quiet 2>>"$out/baselines.time"
  done
done
for ipc in 1 10; do
  $T condense eval "$sets/herding-ipc$ipc.h5" "$sets/kcenter-ipc$ipc.h5" --baseline random --runs 5 \
     --json "$out/baselines-ipc$ipc.json" --markdown "$out/baselines-ipc$ipc.md" --quiet 2>>"$out/baselines.time"
done
$T condense teachers --dataset fashion-mnist --arch convnet --epochs 15 --quiet > "$out/wholedata.txt" 2>>"$out/baselines.time"
