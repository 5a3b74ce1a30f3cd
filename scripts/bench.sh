#!/usr/bin/env bash
# The engine's benchmark, side by side with RapidOCR 3.10.0 (../shared/bench/compare.sh):
# receipts (sroie-dev) with the default config, the Latin charset and the tiny pack; 1280x720
# camera frames (frames-dev); peak RSS over all receipts; process start to first result.
# usage: scripts/bench.sh [ROUNDS]   (run after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
bench=../shared/bench
export PATH="$PWD/.venv/bin:$PATH"
latin=config/examples/latin-documents.yaml
tiny=config/examples/pi-tiny.yaml

echo "== receipts, default config"; "$bench/compare.sh" "$bench/sroie-dev/images" "$bench/sroie-dev/gt" "$rounds"
echo "== receipts, $latin"; EDGE_OCR_CONFIG=$latin "$bench/compare.sh" "$bench/sroie-dev/images" "$bench/sroie-dev/gt" "$rounds"
echo "== receipts, $tiny"; EDGE_OCR_CONFIG=$tiny "$bench/compare.sh" "$bench/sroie-dev/images" "$bench/sroie-dev/gt" "$rounds"
echo "== 1280x720 frames, default config (no ground truth: speed only)"
"$bench/compare.sh" "$bench/frames-dev" "$bench/frames-dev" "$rounds"
for config in config/edge-ocr.yaml "$latin" "$tiny"; do
  echo "== peak RSS of edge-ocr ocr over sroie-dev, $config"
  scripts/peak_rss.py edge-ocr ocr --config "$config" "$bench/sroie-dev/images" --format jsonl
done
echo "== process start to first result (models cached), 5 runs"
for _ in 1 2 3 4 5; do
  scripts/peak_rss.py edge-ocr ocr "$bench/sroie-dev/images/000.jpg"
done
