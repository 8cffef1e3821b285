#!/usr/bin/env bash
# Regenerate the README's pictures of the labeling screen (docs/screenshots/*.png) from the real Label Studio
# 1.23.2 in headless Chromium: runs the browser test with SCREENSHOT_DIR set. Needs Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest -q tests/test_e2e_labelstudio.py -k real_labeling_screen -s
ls -l docs/screenshots
