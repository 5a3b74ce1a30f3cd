"""The last few outcomes, as the status page shows them: a small bounded buffer.

The worker hands each outcome over (it is a `Watcher` of the service) and goes on: a result keeps
a reduced copy of its image (one `cv2.resize`, a few hundred kB), never the decoded frame. The
boxes are drawn and the JPEG encoded only when the page asks for that image, on the page's own
thread, and the JPEG is kept for as long as its entry is.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge.daemon.annotate import draw_result
from edge.errors import EdgeError
from edge.frames import DecodedImage, Frame, OcrResult, SourceRef

JPEG_QUALITY = 85


@dataclass(frozen=True)
class Outcome:
    """One frame as the page shows it: a result with a reduced copy of its image, or an error.

    `scale` and `origin` map the result's (original) pixels to the copy's pixels, as
    `draw_result` takes them.
    """

    number: int
    at: float
    source: SourceRef
    result: Optional[OcrResult] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    copy: Optional[np.ndarray] = None
    scale: float = 1.0
    origin: tuple[int, int] = (0, 0)


class RecentOutcomes:
    """The last `size` outcomes; written by the worker, read by the status page."""

    def __init__(self, size: int, image_side: int) -> None:
        self._entries: deque[Outcome] = deque(maxlen=size)
        self._jpegs: dict[int, bytes] = {}
        self._side = image_side
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def result(self, frame: Frame, image: DecodedImage, result: OcrResult) -> None:
        """Keep a result and a reduced copy of the image it was read from."""
        copy, factor = _reduced(image.pixels, self._side)
        self._add(Outcome(next(self._numbers), time.time(), frame.source, result,
                          copy=copy, scale=image.scale / factor, origin=image.origin))

    def error(self, frame: Frame, error: EdgeError) -> None:
        """Keep an error: its code and message."""
        self._add(Outcome(next(self._numbers), time.time(), frame.source,
                          error_code=error.code, error_message=error.message))

    def outcomes(self) -> list[Outcome]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._entries))

    def annotated_jpeg(self, number: int) -> Optional[bytes]:
        """The copy of result `number` with its boxes and text drawn, as a JPEG; None when that
        outcome is gone (or was an error)."""
        with self._lock:
            if number in self._jpegs:
                return self._jpegs[number]
            outcome = next((o for o in self._entries if o.number == number), None)
        if outcome is None or outcome.copy is None:
            return None
        drawn = draw_result(outcome.copy, outcome.result, outcome.scale, outcome.origin)
        ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        with self._lock:
            if any(o.number == number for o in self._entries):
                self._jpegs[number] = encoded.tobytes()
        return encoded.tobytes()

    def _add(self, outcome: Outcome) -> None:
        with self._lock:
            self._entries.append(outcome)
            kept = {o.number for o in self._entries}
            for number in [n for n in self._jpegs if n not in kept]:
                del self._jpegs[number]


def _reduced(pixels: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy whose longest side is at most `side`, and the factor it was reduced by."""
    height, width = pixels.shape[:2]
    factor = min(1.0, side / max(height, width))
    if factor == 1.0:
        return pixels.copy(), 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), factor
