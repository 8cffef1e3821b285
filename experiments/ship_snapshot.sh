#!/usr/bin/env bash
# Make a validated snapshot the shipped default and score it as the README reports it: copies CHECKPOINT (and its
# run's data list) over model/weights/, evaluates it with the served settings through OpenVINO on full GrabCut +
# Berkeley and on all 345 DAVIS frames, and plots mIoU against clicks beside the previous default and the
# baselines. Run it only for a snapshot that validated clearly better (README, Results); commit by hand.
# Usage: bash experiments/ship_snapshot.sh CHECKPOINT NAME PREV_NAME "LABEL" "PREV_LABEL"
#   e.g. bash experiments/ship_snapshot.sh runs/long_tail/step4000.pth tail4000 step14000 "shipped (tail)" "step 14,000"
#   writes benchmarks/results/lite0_fcfi_NAME_{gb,davis}.json and miou_NAME.png (10 to 20 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT="$1"; NAME="$2"; PREV="$3"; LABEL="$4"; PREV_LABEL="$5"
PY="${PYTHON:-.venv/bin/python}"
R=benchmarks/results
cp "$CKPT" model/weights/lite0_fcfi.pth
cp "$(dirname "$CKPT")/data_list.json" model/weights/lite0_fcfi.data_list.json
"$PY" -m model.evaluation.evaluate --checkpoint default --dataset GrabCut --dataset Berkeley --runtime openvino --no-progress \
    --json "$R/lite0_fcfi_${NAME}_gb.json"
"$PY" -m model.evaluation.evaluate --checkpoint default --dataset DAVIS --runtime openvino --no-progress \
    --json "$R/lite0_fcfi_${NAME}_davis.json"
"$PY" -m model.evaluation.plot_curves "$R/lite0_fcfi_${NAME}_gb.json" "$R/lite0_fcfi_${PREV}_gb.json" \
    "$R/lite0_fcfi_grabcut.json" "$R/lite0_fcfi_berkeley.json" "$R/baselines_grabcut.json" \
    "$R/baselines_random_walker.json" --labels "$LABEL" "$PREV_LABEL" "old default" "old default" \
    "GrabCut baseline" "random walker" -o "$R/miou_${NAME}.png"
