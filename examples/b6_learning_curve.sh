#!/usr/bin/env bash
# B6 learning curve: train one model in stages, keeping a copy of the checkpoint after each
# (RUN-step-N.pt beside the run folder). The learning rate is constant after warm-up, so
# resuming to a larger train.steps is the same run as training there directly.
#
#   bash examples/b6_learning_curve.sh configs/b6-hopper-medium.yaml runs/b6/hopper-medium \
#       "2000 4000 8000 16000" train.threads=1 train.device=cpu
#
# Rerunning continues where it stopped (stages already copied are skipped); more stages can be
# added later. Evaluate the copies with examples/b6_learning_curve.py.
set -euo pipefail
config=$1; out=$2; stages=${3:-"2000 4000 8000 16000"}; shift 3 || true
for steps in $stages; do
  if [ -f "${out}-step-$steps.pt" ]; then continue; fi
  if [ -f "$out/last.pt" ]; then
    diffplan train --config "$config" --out "$out" --resume train.steps="$steps" "$@"
  else
    diffplan train --config "$config" --out "$out" train.steps="$steps" "$@"
  fi
  cp "$out/last.pt" "${out}-step-$steps.pt.tmp"
  mv "${out}-step-$steps.pt.tmp" "${out}-step-$steps.pt"
done
