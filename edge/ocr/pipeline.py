"""The engine: detect, turn, read; one image at a time, results in reading order."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from edge.frames import DecodedImage, OcrResult, TextLine
from edge.ocr.crops import crop_quad, turned
from edge.ocr.detector import Detector
from edge.ocr.recognizer import Recognizer

Classifier = Callable[[list[np.ndarray]], bool]  # True: the page is upside down


class OcrPipeline:
    """Detector -> optional 0/180 page classifier -> recogniser, serial.

    Boxes come back in original-image pixels (the decode's reduction and cut undone), lines below
    `min_score` are dropped, and the rest are in reading order: top-to-bottom, left-to-right, or
    the other way round on a page the classifier finds upside down.
    """

    def __init__(self, detector: Detector, recognizer: Recognizer,
                 classifier: Optional[Classifier] = None, min_score: float = 0.5) -> None:
        self._detector = detector
        self._recognizer = recognizer
        self._classifier = classifier
        self._min_score = min_score

    @property
    def detector(self) -> Detector:
        """The detection stage (quantization checks compare it across variants)."""
        return self._detector

    @property
    def recognizer(self) -> Recognizer:
        """The recognition stage (the memory planner measures it alone)."""
        return self._recognizer

    def __call__(self, image: DecodedImage) -> OcrResult:
        """Read all text lines of one decoded image."""
        timings = {}
        started = time.perf_counter()
        quads = reading_order(self._detector(image.pixels))
        timings["detect"] = _ms_since(started)
        crops = [crop_quad(image.pixels, quad) for quad in quads]
        if self._classifier is not None and crops:
            started = time.perf_counter()
            if self._classifier(crops):
                quads, crops = quads[::-1], [turned(crop) for crop in reversed(crops)]
            timings["classify"] = _ms_since(started)
        started = time.perf_counter()
        readings = self._recognizer(crops) if crops else []
        timings["recognize"] = _ms_since(started)
        lines = tuple(
            TextLine(_to_original(quad, image), reading.text, round(reading.score, 4))
            for quad, reading in zip(quads, readings)
            if reading.text.strip() and reading.score >= self._min_score)
        return OcrResult(image.original_width, image.original_height, lines, timings,
                         round(1.0 / image.scale, 4))


def reading_order(quads: np.ndarray) -> np.ndarray:
    """Sort boxes into rows (centres within half a line height), rows top-down, boxes left-right."""
    if len(quads) < 2:
        return quads
    centres = quads.mean(axis=1)
    heights = np.maximum(1.0, quads[:, :, 1].max(axis=1) - quads[:, :, 1].min(axis=1))
    rows: list[list[int]] = []
    for i in np.argsort(centres[:, 1], kind="stable"):
        if rows and abs(centres[i, 1] - centres[rows[-1][0], 1]) < 0.5 * heights[rows[-1][0]]:
            rows[-1].append(i)
        else:
            rows.append([i])
    order = [i for row in rows for i in sorted(row, key=lambda j: centres[j, 0])]
    return quads[order]


def _to_original(quad: np.ndarray, image: DecodedImage):
    (left, top), scale = image.origin, image.scale
    return tuple((round(float(x) * scale + left, 1), round(float(y) * scale + top, 1))
                 for x, y in quad)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 2)
