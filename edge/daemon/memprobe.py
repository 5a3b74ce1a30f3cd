"""The child process that measures a pack's memory model (`budget.measured_model` runs it).

It loads the pack exactly as the daemon does, with everything the daemon imports (so that counts
in the base), then runs the detector and the recogniser at a few sizes and reads its own peak RSS
after each (Linux resets the peak when "5" is written to /proc/self/clear_refs). It runs apart so
that the daemon's own peak stays an honest record for anyone reading it from outside.

Usage: python -m edge.daemon.memprobe OCR_CONFIG_JSON MODEL_DIR (prints the peaks as JSON).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

import edge.daemon.service  # noqa: F401  (everything the daemon imports counts in the base)
from edge.config import OcrConfig
from edge.daemon import allocator
from edge.daemon.budget import PROBE_SIDE, REC_FULL_WIDTH, Measurement, read_memory
from edge.frames import DecodedImage
from edge.models.calibration import render_page
from edge.models.factory import MemoryCaps, assemble, load_models
from edge.models.store import ModelStore


def measure(ocr_json: str, model_dir: Path) -> Measurement:
    """Load the pack for these OCR settings and measure its peaks at several sizes."""
    config = OcrConfig.model_validate_json(ocr_json)
    models = load_models(config, ModelStore(model_dir), tiled=True)
    page = render_page(1, lines=8).image
    assemble(models, config)(DecodedImage(page, page.shape[1], page.shape[0]))  # lazy init
    base = _settled_rss()
    det = _detector_points(models, config, page)
    # a page's worth of lines of assorted widths, read in batches under several column caps:
    # the batches follow one another as on a real page, so what the heap keeps between them
    # counts too. Each width comes twice, so a batch (of one width) holds two lines at most:
    # with four of each, the tiny pack's peak at 400 columns came to 13.9-16.4 MB against
    # 11.5-14.5 MB (three children each), and a fresh box then refused the 160 MB budget that
    # its pages peak within (146-155 MB through the daemon)
    lines = [_blank_line(width) for width in range(120, REC_FULL_WIDTH + 1, 160)] * 2
    rec = [(columns / 1000, _peak_of(lambda: _recognizer(models, config, columns)(lines), base))
           for columns in (400, 800, 1200, 1600)]
    return Measurement(round(base, 1), *(tuple((size, round(mb, 1)) for size, mb in points)
                                         for points in (det, rec)))


def _detector_points(models, config: OcrConfig, page) -> list[tuple[float, float]]:
    """(tile MP, peak MB) of the detector as a budget runs it: over tiles of a page larger
    than any of them, the stitched map included. A point's size is its largest tile, not the
    cap it ran under (tiles are as small as covering the page allows). The page itself is
    held outside the measurement (the plan counts the decoded image apart)."""
    wide = cv2.resize(page, (PROBE_SIDE, PROBE_SIDE * 3 // 4))
    with_page = _settled_rss()
    points = []
    for cap in (200_000, 350_000, 500_000, 650_000, 800_000):
        detector = _tiled_detector(models, config, cap)
        points.append((detector.largest_run(wide) / 1e6, _peak_of(lambda: detector(wide),
                                                                   with_page)))
    return points


def _tiled_detector(models, config: OcrConfig, cap: int):
    tiled = config.model_copy(update={"det_limit_side": PROBE_SIDE})
    return assemble(models, tiled, MemoryCaps(det_max_pixels=cap)).detector


def _recognizer(models, config: OcrConfig, columns: int):
    caps = MemoryCaps(rec_max_width=min(columns, REC_FULL_WIDTH), rec_max_columns=columns)
    return assemble(models, config, caps).recognizer


def _blank_line(width: int) -> np.ndarray:
    return np.full((48, width, 3), 255, np.uint8)


def _peak_of(work: Callable[[], object], base: float, repeats: int = 3) -> float:
    """The largest growth of the peak RSS over `base` while `work` runs: the heap's
    fragmentation makes it vary from run to run, and a plan must hold in the worst of them.
    What the heap keeps between runs counts in the growth, as it does between frames."""
    peaks = []
    for _ in range(repeats):
        _settled_rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError as exc:
            raise SystemExit(f"cannot reset the peak RSS to measure: {exc}") from exc
        work()
        peaks.append(max(0.0, read_memory().peak_mb - base))
    return max(peaks)


def _settled_rss() -> float:
    allocator.release_free_memory()
    return read_memory().rss_mb


if __name__ == "__main__":
    print(json.dumps(asdict(measure(sys.argv[1], Path(sys.argv[2])))))
