"""Frozen values that flow between the stages of the OCR engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class DecodedImage:
    """A decoded BGR image and how it relates to the original file.

    `scale` maps decoded pixels back to original pixels (2.0 for a half-size reduced decode).
    """

    pixels: np.ndarray
    original_width: int
    original_height: int
    scale: float = 1.0


@dataclass(frozen=True)
class TextLine:
    """One recognised line: a 4-point polygon in original-image pixels, its text and score."""

    box: Quad
    text: str
    score: float


@dataclass(frozen=True)
class OcrResult:
    """Everything the engine read in one image, lines in reading order."""

    width: int
    height: int
    lines: tuple[TextLine, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """All lines joined by newlines, in reading order."""
        return "\n".join(line.text for line in self.lines)
