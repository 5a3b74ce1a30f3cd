#!/usr/bin/env bash
# The side-by-side benchmark: edge-ocr and RapidOCR 3.10.0 in turns on the folders given, each
# folder one row of the Markdown table it prints (the one in the README). RapidOCR is installed
# once, on first use, into a cached venv with edge-ocr's onnxruntime version. Run it after
# scripts/setup.sh. Arguments go to `edge-ocr bench --against rapidocr`, e.g.
#   scripts/bench.sh receipts/images frames/ --gt receipts/gt --rounds 2 [--config FILE]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/.venv/bin/edge-ocr" bench --against rapidocr "$@"
