#!/usr/bin/env bash
# Issue 36's long run: continue from the shipped default (model/weights/lite0_fcfi.pth, EMA of the long run's step
# 14,000 + the 4,000-step 320x480 tail) with VOC2012_val added to the training sets, the click-neighbourhood loss
# (--click-loss 0.5), and validation on both parts of the split (whole objects and held-out everyday photos).
# A fresh Adam (warmup 200), a cosine from 4e-4 over 12,000 steps (the last 15% at 320x480 crops), EMA 0.999,
# new draws (--seed 2). Resumes from runs/long_photos/ (same command); on a bare machine, `restore` first.
# Usage:
#   bash experiments/long_run_photos.sh [DATA_ROOT]      start or resume (background; log runs/long_photos.log)
#   bash experiments/long_run_photos.sh pack             write experiments/resume/long_photos.pt (one file, <20 MB)
#   bash experiments/long_run_photos.sh restore          runs/long_photos/ from that file (when the folder is gone)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=runs/long_photos
PACK=experiments/resume/long_photos.pt
case "${1:-}" in
  pack) exec "$PY" -m model.training.run_state pack-one "$OUT" "$PACK" ;;
  restore) exec "$PY" -m model.training.run_state unpack-one "$PACK" "$OUT" ;;
esac
DATA="${1:-../shared/data}"
mkdir -p runs
nohup "$PY" -m model.training.train --out "$OUT" --init model/weights/lite0_fcfi.pth --data-root "$DATA" \
    --steps 12000 --batch-size 8 --threads 2 --crop 256x256@0,320x480@0.85 --lr 4e-4 --warmup 200 --ema 0.999 \
    --click-loss 0.5 --val-every 1000 --ckpt-every 100 --seed 2 >> runs/long_photos.log 2>&1 &
echo "training in the background (pid $!); log runs/long_photos.log, validation in $OUT/log.jsonl"
