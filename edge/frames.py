"""Frozen values that flow between the stages of the OCR engine."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class DecodedImage:
    """A decoded BGR image and how it relates to the original file.

    `scale` maps decoded pixels back to original pixels (2.0 for a half-size reduced decode), and
    `origin` is where the decoded pixels' top-left corner lies in the original (a camera region
    cut from a larger frame): original = decoded * scale + origin.
    """

    pixels: np.ndarray
    original_width: int
    original_height: int
    scale: float = 1.0
    origin: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class TextLine:
    """One recognised line: a 4-point polygon in original-image pixels, its text and score."""

    box: Quad
    text: str
    score: float


@dataclass(frozen=True)
class OcrResult:
    """Everything the engine read in one image, lines in reading order. `decoded_scale` is the
    share of the original resolution it was read at (0.5: decoded at half size)."""

    width: int
    height: int
    lines: tuple[TextLine, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    decoded_scale: float = 1.0

    @property
    def text(self) -> str:
        """All lines joined by newlines, in reading order."""
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True)
class Placement:
    """Where a frame's pixels were cut from: their top-left corner (`x`, `y`) in the full frame,
    and the full frame's size. Results are reported in the full frame's pixels."""

    x: int
    y: int
    frame_width: int
    frame_height: int

    def place(self, image: DecodedImage) -> DecodedImage:
        """`image`, decoded from the cut, as a part of the full frame."""
        return replace(image, original_width=self.frame_width,
                       original_height=self.frame_height, origin=(self.x, self.y))


@dataclass(frozen=True)
class SourceRef:
    """Where a frame came from, as messages name it: a folder and file, a camera, a command.

    `item` is the file name (made printable), the camera's frame number or the correlation id.
    """

    kind: str  # folder | camera | command
    name: str
    item: str


@dataclass(frozen=True)
class Frame:
    """One unit of work for the worker: encoded bytes (files, commands) or pixels (cameras).

    `key` lets the source that made it find it again (the claimed file's name); `attempt` counts
    how often it was tried, restarts included; `placement` says where camera pixels that are a
    region of a larger frame were cut from.
    """

    source: SourceRef
    key: str
    captured_at: float
    data: Optional[bytes] = None
    pixels: Optional[np.ndarray] = None
    attempt: int = 1
    placement: Optional[Placement] = None
