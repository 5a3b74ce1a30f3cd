"""How `edge-ocr ocr` prints results: text for people, json and jsonl for programs.

The jsonl line is a contract (`edge-ocr bench --against` reads it, and peers print it too):
{"image": basename, "seconds": float, "lines": [{"box": [[x, y] x4], "text": str, "score": float}]}
"""

from __future__ import annotations

import json
from typing import Any

from edge.cli.batch import ImageOutcome


def outcome_record(outcome: ImageOutcome) -> dict[str, Any]:
    """The JSON object of one image (an `error` key instead of results when it failed)."""
    record: dict[str, Any] = {"image": outcome.path.name, "seconds": round(outcome.seconds, 5)}
    if outcome.error is not None:
        record["lines"] = []
        record["error"] = {"code": outcome.error.code, "message": outcome.error.message}
        return record
    result = outcome.result
    record["width"], record["height"] = result.width, result.height
    record["lines"] = [{"box": [list(point) for point in line.box], "text": line.text,
                        "score": line.score} for line in result.lines]
    record["timings_ms"] = result.timings_ms
    return record


def as_jsonl(outcome: ImageOutcome) -> str:
    """One compact line."""
    return json.dumps(outcome_record(outcome), ensure_ascii=False)


def as_text(outcome: ImageOutcome, with_header: bool) -> str:
    """The text of a read image, line by line; a `== name ==` header when several images print."""
    header = f"== {outcome.path.name} ==\n" if with_header else ""
    return header + outcome.result.text
