#!/usr/bin/env bash
# The recipe pilot of issue 13: the first recipe (as the shipped weights were trained) against the new one,
# at an equal number of steps, side by side on one thread each, both validated on the same held-out objects.
# Usage: bash experiments/pilot.sh [STEPS] [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-1600}"
DATA="${2:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
common=(--data-root "$DATA" --steps "$STEPS" --batch-size 8 --threads 1 --val-every $((STEPS / 2))
        --ckpt-every 100 --seed 0)
# The first recipe: five sets drawn per image, 256x256 native-scale crops only, hard copy-paste in 30%,
# lr 5e-3 with a step decay, no EMA, no clipping, no first-click batches, previous mask in the click skip.
nohup "$PY" -m model.training.train --out runs/pilot_old "${common[@]}" \
    --datasets COCO_MVal WeizmannHorse HumanSeg BSDS_regions CCP_subset --sampling images \
    --min-object-frac 0 --stuff-weight 1 --view-prob 0 --paste-prob 0.3 --paste-feather 0 \
    --first-click-prob 0 --schedule step --lr 5e-3 --warmup 200 --decay-at 0.85 --ema 0 --clip-grad 0 \
    --skip-prev-mask --crop 256x256@0 > runs/pilot_old.log 2>&1 &
# The new recipe at its defaults (warmup and EMA scaled to the short schedule).
nohup "$PY" -m model.training.train --out runs/pilot_new "${common[@]}" --warmup 150 --ema 0.998 \
    > runs/pilot_new.log 2>&1 &
wait
