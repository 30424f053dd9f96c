#!/usr/bin/env bash
# Issue 4 measurements: DataDAM and DM on Fashion-MNIST with the cpu preset (2000 iterations each, so
# DataDAM is compared with DM at equal iterations), evaluated under the default protocol (dsa: 5 runs x
# 1000 epochs, final epoch) on the instance-norm ConvNet-3 (the field's standard, the headline) and on the
# BatchNorm ConvNet-3 DataDAM distils with. The random baseline comes from benchmarks/baselines.sh.
#   bash benchmarks/matching.sh      (about 4 hours on 2 cores)
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
mkdir -p "$out" "$sets"
for ipc in 1 10; do
  for algo in datadam dm; do
    /usr/bin/time -v condense distill --algo $algo --ipc $ipc --preset cpu --out "$sets/$algo-ipc$ipc.h5" --quiet \
        2> "$out/$algo-ipc$ipc.distill.time"
  done
  condense eval "$sets/datadam-ipc$ipc.h5" "$sets/dm-ipc$ipc.h5" --arch convnet,convnetbn --runs 5 \
      --json "$out/matching-ipc$ipc.json" --markdown "$out/matching-ipc$ipc.md" --quiet
done
