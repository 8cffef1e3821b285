#!/bin/bash
# The README's ablation table and mIoU plot: every method scored on the ablation samples (every 2nd GrabCut and
# Berkeley sample, every 10th DAVIS sample) from the result files in experiments/results.
# Usage: bash experiments/ablation_table.sh   (from the repository root, in the project's environment)
set -euo pipefail
R=experiments/results
python -m benchmarks.noc_table --datasets GrabCut,Berkeley,DAVIS \
    --subset-of $R/ablation_full_gb2.json --subset-of $R/ablation_full_davis10.json \
    --plot $R/miou_all.png --title "mIoU vs clicks (ablation samples)" \
    "FCFI full, 600 steps=$R/ablation_full_gb2.json,$R/ablation_full_davis10.json" \
    "FFCM only (+FFC), 600 steps=$R/ablation_ffcm_gb2.json,$R/ablation_ffcm_davis10.json" \
    "CFFM only, 600 steps=$R/ablation_cffm_gb2.json,$R/ablation_cffm_davis10.json" \
    "no FCFI, 600 steps=$R/ablation_none_gb2.json,$R/ablation_none_davis10.json" \
    "FCFI full, 1200 steps=$R/ablation_full_1200_gb2.json,$R/ablation_full_1200_davis10.json" \
    "no FCFI, 1200 steps=$R/ablation_none_1200_gb2.json,$R/ablation_none_1200_davis10.json" \
    "FCFI full, 1800 steps=$R/ablation_full_1800_gb2.json,$R/ablation_full_1800_davis10.json" \
    "no FCFI, 1800 steps=$R/ablation_none_1800_gb2.json,$R/ablation_none_1800_davis10.json" \
    "shipped (flip on)=$R/lite0_fcfi_grabcut.json,$R/lite0_fcfi_berkeley.json,$R/lite0_fcfi_davis5.json" \
    "GrabCut baseline=$R/baselines_grabcut.json,$R/baselines_grabcut_davis5.json" \
    "random walker=$R/baselines_random_walker.json,$R/baselines_random_walker_davis5.json" \
    | tee /dev/stderr | tail -n 1 > $R/noc_table_all.json
