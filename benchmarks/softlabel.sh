#!/usr/bin/env bash
# Issue 6: the two soft-label protocols on Fashion-MNIST at IPC 1, for the sets of baselines.sh and
# ncfm.sh, next to a random subset labelled by the same teacher (the default one: ConvNet-3 trained 15
# epochs on all the data, 93.3%, cached by baselines.sh), 3 runs each, final epoch. kd-static labels
# each image once with the teacher's logits on the un-augmented image; kd-sre2l asks the teacher on
# every augmented (random resized crop + CutMix) batch.
#   bash benchmarks/softlabel.sh      (about 15 minutes on 2 cores)
set -euo pipefail
out=benchmarks/results
sets=${SETS_DIR:-/tmp/condense-bench}
for proto in kd-static kd-sre2l; do
  /usr/bin/time -f %e_s_wall_%U_s_user_%S_s_sys_%M_KB_maxrss \
    condense eval "$sets/herding-ipc1.h5" "$sets/ncfm-ipc1.h5" --protocol $proto --baseline random --runs 3 \
      --json "$out/soft-$proto-ipc1.json" --markdown "$out/soft-$proto-ipc1.md" --quiet 2>> "$out/soft-ipc1.time"
done
