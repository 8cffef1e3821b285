#!/usr/bin/env bash
# Regenerate the README's pictures of the labeling screen (docs/screenshots/*.png): the served model (the shipped
# weights, or E2E_CHECKPOINT) clicked on two CC0 photos in the real Label Studio 1.23.2 in headless Chromium. Runs
# the browser test with SCREENSHOT_DIR set (tests/test_e2e_labelstudio.py, PHOTO_CLICKS); the pictures replace the
# old ones only if it passes. Needs Debian's chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
shots="$(mktemp -d)"
trap 'rm -rf "$shots"' EXIT
SCREENSHOT_DIR="$shots" .venv/bin/python -m pytest -q tests/test_e2e_labelstudio.py -k real_labeling_screen -s
rm -f docs/screenshots/*.png
mv "$shots"/*.png docs/screenshots/
ls -l docs/screenshots
