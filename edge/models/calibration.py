"""Images to calibrate and check quantized models: rendered text pages, or a user's own frames.

Rendered pages are deterministic for a given seed, so two installs calibrate on the same data and
their agreement figures compare. A folder of real frames from the site calibrates better still.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge.errors import ConfigError, ImageError
from edge.frames import DecodedImage
from edge.ocr.imageio import ImageLimits, decode_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

_WORDS = ("TOTAL", "CASH", "CHANGE", "Invoice", "Receipt", "Qty", "Price", "Amount", "Tax",
          "Subtotal", "Rounding", "Thank", "you", "please", "come", "again", "Date", "Time",
          "Table", "Item", "Discount", "Member", "Card", "Station", "Street", "Road", "Order",
          "Delivery", "kiosk", "sensor", "Line", "Batch", "Serial", "Model", "Lot", "Exp")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


@dataclass(frozen=True)
class RenderedLine:
    """Ground truth of one rendered line: its text and axis-aligned quad."""

    text: str
    box: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RenderedPage:
    """A rendered BGR page and the lines drawn on it, top to bottom."""

    image: np.ndarray
    lines: tuple[RenderedLine, ...]


def random_text(rng: np.random.Generator) -> str:
    """A short receipt- or label-like line: words, numbers, prices, codes."""
    parts = []
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(0, 4)
        if kind == 0:
            parts.append(f"{rng.integers(1, 999)}.{rng.integers(0, 100):02d}")
        elif kind == 1:
            parts.append(f"{rng.integers(100, 99999)}")
        else:
            parts.append(str(rng.choice(_WORDS)))
    return " ".join(parts)


def render_page(seed: int, width: int = 960, height: int = 720, lines: int = 10) -> RenderedPage:
    """Draw `lines` lines of random text in varied fonts, sizes and shades on a noisy page."""
    rng = np.random.default_rng(seed)
    page = _background(rng, width, height)
    drawn = []
    y = int(rng.integers(30, 60))
    for _ in range(lines):
        font = int(rng.choice(_FONTS))
        scale = float(rng.uniform(1.6, 2.4) if font == cv2.FONT_HERSHEY_PLAIN else rng.uniform(0.8, 1.3))
        thickness = int(rng.integers(1, 3))
        text = random_text(rng)
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        if y + th + base > height - 10:
            break
        x = int(rng.integers(10, max(11, width - tw - 10)))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        cv2.putText(page, text, (x, y + th), font, scale, ink, thickness, cv2.LINE_AA)
        box = ((x, y), (x + tw, y), (x + tw, y + th + base), (x, y + th + base))
        drawn.append(RenderedLine(text, box))
        y += th + base + int(rng.integers(12, 30))
    page = cv2.GaussianBlur(page, (3, 3), float(rng.uniform(0.1, 0.8)))
    return RenderedPage(page, tuple(drawn))


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.integers(190, 255, 3).astype(np.float32)
    ramp = np.linspace(0, float(rng.uniform(-30, 30)), width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def rendered_images(count: int, seed: int = 0) -> Iterator[DecodedImage]:
    """`count` rendered pages as decoded images (seeds seed, seed+1, ...)."""
    for i in range(count):
        page = render_page(seed + i)
        yield DecodedImage(page.image, page.image.shape[1], page.image.shape[0])


def folder_images(folder: Path, count: int, limits: ImageLimits) -> list[DecodedImage]:
    """Up to `count` decodable images from a folder, in name order, decoded within `limits`;
    unreadable ones are skipped."""
    if not folder.is_dir():
        raise ConfigError(f"calibration folder {folder} does not exist")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            images.append(decode_file(path, limits))
        except ImageError:
            continue
        if len(images) == count:
            break
    if not images:
        raise ConfigError(f"no readable images in calibration folder {folder}")
    return images
