#!/usr/bin/env bash
# The long training run of issue 13: the v2 recipe at its defaults on every training set, both cores, 15 hours
# or more on a 2-core CPU (`python -m model.training.plot runs/long/log.jsonl -o curve.png` prints the hours
# spent). Starts, or resumes from runs/long/last.pth + train_state.pth (same command).
# The shipped weights are one of its EMA snapshots (runs/long/stepN.pth), chosen on the validation split with the
# served settings: python -m model.training.validation --checkpoint runs/long/stepN.pth --runtime openvino --flip
# Usage: bash experiments/long_run.sh [DATA_ROOT]   (runs in the background; log: runs/long.log)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p runs
nohup "$PY" -m model.training.train --out runs/long --data-root "$DATA" --steps 28000 --batch-size 8 --threads 2 \
    --warmup 500 --ema 0.9995 --val-every 2000 --ckpt-every 100 --seed 0 >> runs/long.log 2>&1 &
echo "training in the background (pid $!); log runs/long.log, validation in runs/long/log.jsonl"
