#!/usr/bin/env bash
# One prepared run on the lent GPU machine (the `device` tool; 15 minutes of device time per task, at most 10 per
# command). In order, within BUDGET_S seconds:
#   1. the serve benchmark with DEVICE=cuda on the quiet machine (benchmarks/serve.py, runtime torch);
#   2. the ablation of issue 13: full FCFI and the paper's baseline (--fcfi none), seeds 0 and 1, the v2 recipe
#      at batch BATCH, all four at once, each with WORKERS batch-making processes, EMA snapshots every SNAP steps;
#      meanwhile the predictor tests with DEVICE=cuda (tests/test_predictor.py);
#   3. each run's EMA at the last step all four reached, scored on the packed validation split (--curves);
#   4. into $OUT: the four checkpoints, serve.json and results.tar.gz (logs, curves, test output, nvidia-smi).
# Prepare here first (git-ignored, carried): python experiments/pack_device_data.py, and the wheels the backend needs
# that the machine lacks, into device_pack/wheels:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d device_pack/wheels \
#       Flask==3.1.3 blinker itsdangerous werkzeug redis==8.1.0 rq==2.12.0 croniter
# Call: device run, carry ["device_pack"], command "bash experiments/device_run.sh", timeout_s about BUDGET_S + 30.
# SKIP_CHECKS=1 leaves out the serve benchmark and the predictor tests (a second call that only trains).
# Measured on one H200 (2026-11-29): four runs at once took 0.29-0.33 s per step of 64 after a 40 s start (index,
# image decode, cuDNN autotune), so the default 1,100 steps need about 7 minutes; validation 31-42 s per run. The
# full-budget ablation (1,100 steps, 70,400 samples per run) therefore fits one call with SKIP_CHECKS=1.
# A dry run here: OUT=/tmp/dev DEVICE=cpu PYTHON=.venv/bin/python STEPS=4 SNAP=2 BATCH=2 WORKERS=1 BUDGET_S=300 \
#   SERVE_ARGS="--sessions 1 --clicks 2" bash experiments/device_run.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device_out}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
BUDGET_S="${BUDGET_S:-540}"
STEPS="${STEPS:-1100}"        # 1,100 x 64 = 70,400 samples: 3.06 h of the 2-core CPU at 6.4 samples/s
BATCH="${BATCH:-64}"
LR="${LR:-3e-3}"
WARMUP="${WARMUP:-100}"
EMA="${EMA:-0.995}"
WORKERS="${WORKERS:-3}"
EVAL_S="${EVAL_S:-60}"
SNAP="${SNAP:-100}"           # snapshot interval; STEPS is a multiple of it
SERVE_ARGS="${SERVE_ARGS:---sessions 4 --clicks 10}"
WORK="${WORK:-/tmp/device_work}"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
rm -rf "$WORK"; mkdir -p "$OUT" "$WORK/logs" "$WORK/runs"
export PYTHONUNBUFFERED=1 DEVICE
{ date -u; nproc; nvidia-smi 2>&1 | head -15; "$PY" -c "import torch, cv2, numpy; print(torch.__version__, \
torch.cuda.is_available(), cv2.__version__, numpy.__version__)"; } > "$WORK/logs/machine.txt" 2>&1

if [ -n "$(ls device_pack/wheels/*.whl 2>/dev/null)" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site device_pack/wheels/*.whl \
    > "$WORK/logs/pip.txt" 2>&1 || echo "pip install failed" >> "$WORK/logs/pip.txt"
fi
export PYTHONPATH="/tmp/site:$PWD/device_pack/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

df -h /dev/shm /tmp >> "$WORK/logs/machine.txt" 2>&1
if [ "${SKIP_CHECKS:-0}" != 1 ]; then
  echo "[$(( $(date +%s) - T0 ))s] serve benchmark" | tee -a "$WORK/logs/phases.txt"
  # shellcheck disable=SC2086
  timeout 110 "$PY" -m benchmarks.serve --runtimes torch --device "$DEVICE" $SERVE_ARGS \
    > "$OUT/serve.json" 2> "$WORK/logs/serve.err"
  echo "serve rc=$?" >> "$WORK/logs/phases.txt"
fi

echo "[$(( $(date +%s) - T0 ))s] training, $(left)s left" | tee -a "$WORK/logs/phases.txt"
TRAIN_S=$(( $(left) - EVAL_S - 25 ))
RUNS="full-s0 full-s1 none-s0 none-s1"  # variant-sSEED
pids=()
for run in $RUNS; do
  timeout "$TRAIN_S" "$PY" -m model.training.train --out "$WORK/runs/$run" --data-root device_pack/data \
    --fcfi "${run%-s*}" --seed "${run#*-s}" --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup "$WARMUP" \
    --ema "$EMA" --crop 256x256 --val-every 0 --snapshot-every "$SNAP" --ckpt-every "$SNAP" --workers "$WORKERS" \
    --threads 1 --device "$DEVICE" --no-leak-check > "$WORK/logs/train-$run.log" 2>&1 &
  pids+=($!)
done
if [ "${SKIP_CHECKS:-0}" != 1 ]; then
  timeout 170 "$PY" -m pytest -q -p no:cacheprovider tests/test_predictor.py > "$WORK/logs/predictor_tests.txt" 2>&1
  echo "predictor tests rc=$?" >> "$WORK/logs/phases.txt"
fi
for p in "${pids[@]}"; do wait "$p"; echo "train pid $p rc=$?" >> "$WORK/logs/phases.txt"; done

# The last snapshot every run reached: equal budgets.
common=""
for s in $(seq "$STEPS" -"$SNAP" "$SNAP"); do
  reached=1
  for run in $RUNS; do [ -f "$WORK/runs/$run/step$s.pth" ] || reached=0; done
  if [ "$reached" = 1 ]; then common=$s; break; fi
done
echo "[$(( $(date +%s) - T0 ))s] common step: ${common:-none}, $(left)s left" | tee -a "$WORK/logs/phases.txt"
if [ -n "$common" ]; then
  for run in $RUNS; do
    cp "$WORK/runs/$run/step$common.pth" "$OUT/$run.pth"
    timeout $(( $(left) > 30 ? $(left) - 15 : 15 )) "$PY" -m model.training.validation --checkpoint "$WORK/runs/$run/step$common.pth" \
      --data-root device_pack/data --device "$DEVICE" --threads 1 --no-clicked-parts-only \
      --curves "$WORK/logs/val-$run.json" > "$WORK/logs/val-$run.txt" 2>&1 &
  done
  wait
fi
for run in $RUNS; do
  cp "$WORK/runs/$run/log.jsonl" "$WORK/logs/log-$run.jsonl" 2>/dev/null
  cp "$WORK/runs/$run/commands.txt" "$WORK/logs/commands-$run.txt" 2>/dev/null
done
cp "$WORK/runs/full-s0/data_list.json" "$WORK/logs/" 2>/dev/null
echo "[$(( $(date +%s) - T0 ))s] done" >> "$WORK/logs/phases.txt"
tar -czf "$OUT/results.tar.gz" -C "$WORK" logs
cat "$WORK/logs/phases.txt"; tail -3 "$WORK/logs/predictor_tests.txt" 2>/dev/null; cat "$WORK/logs/val"-*.txt 2>/dev/null | tail -8
