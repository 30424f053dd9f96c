#!/usr/bin/env bash
# Issue 4, session 14: is DataDAM (instance-norm backbone, its best variant in RESULTS §3) vs DM at IPC 10
# a difference between methods or between distillation runs? Both distilled again with --seed 1 (the §3 sets
# used the default seed 0), same cpu preset (2000 iterations, 64 real images per class), evaluated like §3
# (dsa protocol, instance-norm ConvNet-3, 5 runs).
#   bash benchmarks/matching_seeds.sh      (about 1 hour on 2 cores)
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
mkdir -p "$out" "$sets"
[ -f "$sets/dm-ipc10-seed1.h5" ] || /usr/bin/time -v condense distill --algo dm --ipc 10 --preset cpu --seed 1 \
    --out "$sets/dm-ipc10-seed1.h5" --quiet 2> "$out/dm-ipc10-seed1.distill.time"
[ -f "$sets/datadam-in-ipc10-seed1.h5" ] || /usr/bin/time -v condense distill --algo datadam --ipc 10 --preset cpu \
    --set norm=instancenorm --seed 1 --out "$sets/datadam-in-ipc10-seed1.h5" --quiet 2> "$out/datadam-in-ipc10-seed1.distill.time"
condense eval "$sets/dm-ipc10-seed1.h5" "$sets/datadam-in-ipc10-seed1.h5" --arch convnet --runs 5 \
    --json "$out/matching-seed1-ipc10.json" --markdown "$out/matching-seed1-ipc10.md" --quiet
