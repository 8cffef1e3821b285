#!/usr/bin/env bash
# The ablation of issue 13 on this 2-core CPU, for when no GPU is lent (experiments/device_run.sh does it in one GPU
# call): full FCFI and the paper's baseline (--fcfi none: the previous mask only as an input channel), seeds 0 and 1,
# recipe v2 at batch 8 with 256x256 crops, STEPS steps each. The default 17,600 x 8 = 140,800 samples is at least
# 3 hours of both cores per run on the fastest 2-core machine measured (an AMD EPYC at 0.63 s per step: 3.1 h; a
# Xeon at 1.3-1.4 s per step, or another EPYC at 1.34-1.55 s, takes 6-7 h), twice the GPU script's 70,400.
# So 12 to 27 hours for all four, over several sessions: the runs go one after another in the background, each
# resumes from its own checkpoint and a finished one (final.pth) is skipped, so the same command continues in every
# session until all four are done.
# Each run, once trained, is scored through OpenVINO on the validation split and on GrabCut + Berkeley, as in the
# GPU ablation: Zoom-In on, flip and the clicked-parts clean-up off, so that it is the networks that are compared.
# The paired bootstrap of FCFI - baseline is redone over the seeds whose two variants are both scored (seed 0 after
# the second run, both seeds after the fourth):
#   experiments/results/ablation_cpu_RUN_{val,gb}.json and ablation_cpu_paired.jsonl
# Usage: bash experiments/ablation_cpu.sh [DATA_ROOT]   (log: runs/abl_cpu.log; hours per run:
#   python -m model.training.plot runs/abl_cpu/*/log.jsonl -o runs/abl_cpu/curves.png)
# A machine may come back without runs/, so before a session ends: bash experiments/ablation_cpu.sh pack, and commit
# resume/abl_cpu/ (model.training.run_state: the unfinished run's resume state, three files of about 12.5 MB; states of runs already scored
# are removed). Every run is restored from there before it trains, unless its folder is already as far.
# A dry run (about 7 minutes): FOREGROUND=1 STEPS=2 BATCH=2 RUNS_DIR=/tmp/abl RESULTS=/tmp/abl/results \
#   EXTRA="--no-leak-check --warmup 1" VAL_ARGS="--val-fraction 0.02" SCORE_ARGS="--dataset GrabCut --every 25" \
#   bash experiments/ablation_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
STEPS="${STEPS:-17600}"
BATCH="${BATCH:-8}"
RUNS_DIR="${RUNS_DIR:-runs/abl_cpu}"
RESULTS="${RESULTS:-experiments/results}"
STATE_DIR="${STATE_DIR:-resume/abl_cpu}"  # committed resume states (model.training.run_state)
SCORE_ARGS="${SCORE_ARGS:---dataset GrabCut --dataset Berkeley}"
EXTRA="${EXTRA:-}"          # more model.training.train flags
VAL_ARGS="${VAL_ARGS:-}"    # flags of both model.training.train and model.training.validation (the split must match)
RUNS="full-s0 none-s0 full-s1 none-s1"  # variant-sSEED; seed 0 of both first, so a partial campaign still pairs
mkdir -p "$RUNS_DIR" "$RESULTS"

scored() { [ -f "$RESULTS/ablation_cpu_${1/-s/_s}_val.json" ] && [ -f "$RESULTS/ablation_cpu_${1/-s/_s}_gb.json" ]; }

if [ "${1:-}" = pack ]; then
  # The first run not yet scored is the one in progress: pack it (the training is paused meanwhile, so its
  # checkpoint files agree); drop the states of runs that are scored, which nothing needs any more.
  mkdir -p "$STATE_DIR"
  for run in $RUNS; do
    if scored "$run"; then rm -rf "${STATE_DIR:?}/$run"; continue; fi
    [ -f "$RUNS_DIR/$run/train_state.pth" ] || break
    pid="$(pgrep -f -- "--out $RUNS_DIR/$run " || true)"
    [ -z "$pid" ] || kill -STOP $pid
    "$PY" -m model.training.run_state pack "$RUNS_DIR/$run" "$STATE_DIR/$run" || status=$?
    [ -z "$pid" ] || kill -CONT $pid
    exit "${status:-0}"
  done
  exit 0
fi

paired() {
  local seeds="" s kind
  for s in 0 1; do
    if [ -f "$RESULTS/ablation_cpu_full_s${s}_gb.json" ] && [ -f "$RESULTS/ablation_cpu_none_s${s}_gb.json" ]; then
      seeds="$seeds $s"
    fi
  done
  [ -n "$seeds" ] || return 0
  for kind in val gb; do
    # shellcheck disable=SC2046
    "$PY" -m benchmarks.ablation_paired \
      --fcfi $(for s in $seeds; do echo "$RESULTS/ablation_cpu_full_s${s}_$kind.json"; done) \
      --base $(for s in $seeds; do echo "$RESULTS/ablation_cpu_none_s${s}_$kind.json"; done)
  done > "$RESULTS/ablation_cpu_paired.jsonl"
  cat "$RESULTS/ablation_cpu_paired.jsonl"
}

campaign() {
  set -euo pipefail
  for run in $RUNS; do
    name="${run/-s/_s}"
    scored "$run" && continue  # its figures are in; its folder is not needed (and may be gone)
    if [ -f "$STATE_DIR/$run/state.pt" ]; then
      "$PY" -m model.training.run_state unpack "$STATE_DIR/$run" "$RUNS_DIR/$run"
    fi
    if [ ! -f "$RUNS_DIR/$run/final.pth" ]; then
      # shellcheck disable=SC2086
      "$PY" -m model.training.train --out "$RUNS_DIR/$run" --data-root "$DATA" --fcfi "${run%-s*}" --seed "${run#*-s}" \
        --steps "$STEPS" --batch-size "$BATCH" --crop 256x256 --val-every 0 --ckpt-every 100 --threads 2 \
        $EXTRA $VAL_ARGS
    fi
    # Each run is scored as soon as it is trained, so its figures can be committed in the session it ends in.
    if [ ! -f "$RESULTS/ablation_cpu_${name}_val.json" ]; then
      # shellcheck disable=SC2086
      "$PY" -m model.training.validation --checkpoint "$RUNS_DIR/$run/final.pth" --data-root "$DATA" --runtime openvino \
        --threads 2 --no-clicked-parts-only --curves "$RESULTS/ablation_cpu_${name}_val.json" $VAL_ARGS
    fi
    if [ ! -f "$RESULTS/ablation_cpu_${name}_gb.json" ]; then
      # shellcheck disable=SC2086
      "$PY" -m model.evaluation.evaluate --checkpoint "$RUNS_DIR/$run/final.pth" --data-root "$DATA" $SCORE_ARGS --no-flip \
        --no-clicked-parts-only --runtime openvino --no-progress --json "$RESULTS/ablation_cpu_${name}_gb.json"
    fi
    # A baseline run completes a pair: the paired bootstrap over the seeds whose two variants are both scored.
    case "$run" in none-*) paired ;; esac
  done
}

if [ "${FOREGROUND:-0}" = 1 ]; then
  campaign
else
  export -f campaign paired scored
  export PY DATA STEPS BATCH RUNS_DIR RESULTS STATE_DIR SCORE_ARGS EXTRA VAL_ARGS RUNS
  nohup bash -c campaign >> runs/abl_cpu.log 2>&1 &
  echo "ablation in the background (pid $!); log runs/abl_cpu.log"
fi
