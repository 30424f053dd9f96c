#!/usr/bin/env bash
# Issue 3 measurements: NCFM on Fashion-MNIST with the cpu preset, evaluated under the default
# protocol (dsa: 5 runs x 1000 epochs, final epoch), with and without multi-formation decoding;
# then the speed benchmark at the official CIFAR-10 settings. Run by hand from the repository root
# after benchmarks/baselines.sh (the random baseline comes from there):
#   bash benchmarks/ncfm.sh      (about 4 hours on 2 cores, the first run also builds the 4-net pool)
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
mkdir -p "$out" "$sets"
for ipc in 10 1; do
  /usr/bin/time -v condense distill --algo ncfm --ipc $ipc --preset cpu --out "$sets/ncfm-ipc$ipc.h5" --quiet \
      2> "$out/ncfm-ipc$ipc.distill.time"
  condense eval "$sets/ncfm-ipc$ipc.h5" --runs 5 --json "$out/ncfm-ipc$ipc.json" --markdown "$out/ncfm-ipc$ipc.md" --quiet
  condense eval "$sets/ncfm-ipc$ipc.h5" --no-decode --runs 5 --json "$out/ncfm-ipc$ipc-nodecode.json" \
      --markdown "$out/ncfm-ipc$ipc-nodecode.md" --quiet
done
# Speed at the official settings (one fresh process per setting; the 20-net pool is built untrained).
condense teachers --pool ncfm --set pool_size=20 --set pool_epochs=0 --quiet > /dev/null
for ipc in 1 10; do
  python benchmarks/speed_matching.py ncfm $ipc 5 batch_real=1024 num_freqs=4096 factor=2 calib=true \
      pool_size=20 pool_epochs=0 --json-out "$out/speed_matching.jsonl"
done
