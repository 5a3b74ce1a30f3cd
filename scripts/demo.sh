#!/usr/bin/env bash
# Install (scripts/setup.sh), write a few sample images with known text, and read them back.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
samples=${1:-samples}
.venv/bin/edge-ocr samples "$samples"
.venv/bin/edge-ocr ocr "$samples" --draw "$samples/drawn"
echo "annotated images: $samples/drawn/"
