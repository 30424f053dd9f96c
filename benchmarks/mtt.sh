#!/usr/bin/env bash
# Issue 5 measurements (trajectory matching) on Fashion-MNIST with the cpu preset, one step at a time so
# that a step can be re-run alone:  bash benchmarks/mtt.sh [experts|distill|improved|eval|speed|all]
#   experts   4 plain-SGD experts x 6 epochs (the cpu preset's buffer): time per epoch, size on disk
#   distill   IPC 1 and IPC 10 with the cpu preset (the learned step size is saved in the file)
#   improved  IPC 10 with the AST/DATM options on (representative init, balanced and intermediate loss,
#             weight perturbation; DATM's growing window and loss gate). Left out: AST's inner momentum
#             (it pairs with momentum-trained smooth experts; against these plain-SGD experts the student
#             overshoots) and DATM's learnable soft
#             labels (the hard-label protocol would ignore them; kd-static reads them)
#   eval      dsa protocol (learned lr, 1000 epochs, final epoch; 5 runs at IPC 1, 3 at IPC 10 for time)
#             next to random under the same protocol (baselines.sh)
#   speed     unroll vs recompute, N = 10, 20, 30, 40 at IPC 10 and N = 50 at IPC 1 (stand-in experts;
#             IPC 1 N 50 and IPC 10 N 30 are the original's reference settings)
# Run nothing else on the machine meanwhile (two 2-thread processes on 2 cores distort every timing).
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
what=${1:-all}
mkdir -p "$out" "$sets"
run() { [ "$what" = all ] || [ "$what" = "$1" ]; }
if run experts; then
  /usr/bin/time -v condense experts --dataset fashion-mnist --arch convnet --num 4 --epochs 6 --recipe mtt \
      2> "$out/mtt-experts.time" | tee "$out/mtt-experts.txt"
  du -sh "${CONDENSE_CACHE:-$HOME/.cache/condense}/artifacts" >> "$out/mtt-experts.txt"
fi
if run distill; then
  for ipc in 1 10; do
    /usr/bin/time -v condense distill --algo mtt --ipc $ipc --preset cpu --out "$sets/mtt-ipc$ipc.h5" --quiet \
        2> "$out/mtt-ipc$ipc.distill.time"
  done
fi
if run improved; then
  /usr/bin/time -v condense distill --algo mtt --ipc 10 --preset cpu --out "$sets/mtt-ipc10-improved.h5" --quiet \
      --set init=kmeans --set balance_loss=true --set middle_loss=true --set weight_perturb=1.0 \
      --set max_start_epoch_start=2 \
      --set window_growth_iters=150 --set loss_gate=1.1 \
      2> "$out/mtt-ipc10-improved.distill.time"
fi
if run eval; then
  condense eval "$sets/mtt-ipc1.h5" --runs 5 --json "$out/mtt-ipc1.json" --markdown "$out/mtt-ipc1.md" --quiet
  condense eval "$sets/mtt-ipc10.h5" "$sets/mtt-ipc10-improved.h5" --runs 3 \
      --json "$out/mtt-ipc10.json" --markdown "$out/mtt-ipc10.md" --quiet
fi
if run speed; then
  python benchmarks/speed_mtt.py 1 50 unroll --json-out "$out/speed_mtt.jsonl"
  python benchmarks/speed_mtt.py 1 50 recompute --json-out "$out/speed_mtt.jsonl"
  for n in 10 20 30 40; do for m in unroll recompute; do
    python benchmarks/speed_mtt.py 10 $n $m 2 --json-out "$out/speed_mtt.jsonl"
  done; done
fi
