#!/usr/bin/env bash
# Install the Debian packages it uses (scripts/system-packages.sh) and edge-ocr into ./.venv,
# then fetch and quantize the model packs and time their variants here (precision auto).
# A 32-bit system (32-bit Raspberry Pi OS) is refused first: see scripts/check-platform.sh.
# Safe to run again: packs already present and verified, and variants already built, are kept.
# Model directory: $EDGE_OCR_MODEL_DIR, else ~/.cache/edge-ocr/models.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-platform.sh
scripts/system-packages.sh
python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/edge-ocr models pull all
.venv/bin/edge-ocr models quantize all --if-missing
