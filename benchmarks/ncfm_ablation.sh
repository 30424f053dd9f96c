#!/usr/bin/env bash
# Issue 3 ablations at IPC 10 on Fashion-MNIST, at a REDUCED budget so that the four rows fit in
# about 75 minutes on 2 cores: the cpu preset with 300 distillation iterations (instead of 1000),
# each set evaluated under dsa with 2 runs x 300 epochs (instead of 5 x 1000). All four rows share
# this budget, so they compare with each other, not with the full-protocol numbers.
#   bash benchmarks/ncfm_ablation.sh
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
mkdir -p "$out" "$sets"
declare -A settings=([base]="" [psi]="--set psi=true" [nocalib]="--set calib=false" [factor1]="--set factor=1")
for row in base psi nocalib factor1; do
  /usr/bin/time -v condense distill --algo ncfm --ipc 10 --preset cpu --iters 300 ${settings[$row]} \
      --out "$sets/ncfm-abl-$row.h5" --quiet 2> "$out/ncfm-abl-$row.distill.time"
  condense eval "$sets/ncfm-abl-$row.h5" --no-stack --runs 2 --epochs 300 --json "$out/ncfm-abl-$row.json" \
      --markdown "$out/ncfm-abl-$row.md" --quiet
done
