"""The benchmark's RapidOCR runner. It runs under the peer's own Python (a separate, cached
virtual environment holding `rapidocr`), never inside edge-ocr, and imports nothing of it.

usage: python peer_rapidocr.py [--threads N] IMAGE...
Prints one JSON line per image, as `edge-ocr ocr --format jsonl` does:
{"image": name, "seconds": decode to result, "lines": [{"box": [[x, y] x4], "text", "score"}]}
The first image is read once before the clock starts, so lazy set-up is not timed.
"""

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    """Read every image given and print its line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime threads; 0 = its default")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    from rapidocr import RapidOCR

    params = {"EngineConfig.onnxruntime.intra_op_num_threads": args.threads} if args.threads else {}
    engine = RapidOCR(params=params)
    engine(str(args.images[0]))
    for path in args.images:
        started = time.perf_counter()
        output = engine(str(path))
        seconds = time.perf_counter() - started
        record = {"image": path.name, "seconds": round(seconds, 5), "lines": _lines(output)}
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def _lines(output) -> list:
    if output.boxes is None:
        return []
    return [{"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
            for box, text, score in zip(output.boxes, output.txts, output.scores)]


if __name__ == "__main__":
    sys.exit(main())
