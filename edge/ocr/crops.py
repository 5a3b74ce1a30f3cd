"""Line crops: cut a quad out of the image upright, split lines too wide to read at once, and
pack crops into model batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

VERTICAL_RATIO = 1.5  # a crop this many times taller than wide is a vertical line


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Warp the quad (clockwise from top-left) to an upright rectangle; turn vertical lines."""
    width = int(round(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[3] - quad[2]))))
    height = int(round(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    crop = cv2.warpPerspective(image, matrix, (width, height), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)
    if height >= VERTICAL_RATIO * width:
        crop = np.rot90(crop).copy()
    return crop


def scaled_width(crop: np.ndarray, height: int, max_width: int) -> int:
    """Width of the crop once resized to `height`, capped at `max_width`."""
    h, w = crop.shape[:2]
    return max(1, min(max_width, math.ceil(height * w / h)))


@dataclass(frozen=True)
class Piece:
    """Part of a line too wide to read at once, at the recogniser's height: its columns from
    `keep_from` to `keep_to` are read for the line, the rest is context shared with the
    neighbouring pieces."""

    pixels: np.ndarray
    keep_from: int
    keep_to: int


def split_wide(crop: np.ndarray, height: int, max_width: int, context: int) -> list[Piece]:
    """A line wider than `max_width` once resized to `height`, as pieces at most that wide
    (`context` columns of each neighbour included); each cut falls on the emptiest column of
    its stretch, between letters or words. A line that fits gives no pieces."""
    width = math.ceil(height * crop.shape[1] / crop.shape[0])
    if width <= max_width:
        return []
    line = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    context = min(context, max_width // 4)
    emptiness = _smoothed_contrast(line)
    stretch = max_width - 2 * context
    cuts = [0]
    while width - cuts[-1] + context > max_width:
        low = cuts[-1] + stretch // 2
        cuts.append(low + int(np.argmin(emptiness[low:cuts[-1] + stretch])))
    cuts.append(width)
    pieces = []
    for start, end in zip(cuts, cuts[1:]):
        left, right = max(0, start - context), min(width, end + context)
        pieces.append(Piece(line[:, left:right], start - left, end - left))
    return pieces


def _smoothed_contrast(line: np.ndarray) -> np.ndarray:
    """Each column's contrast (brightest minus darkest pixel) in the line's middle three
    fifths, where letters are and the crop's borders are not, averaged over five columns so
    that the lowest falls in the middle of a gap."""
    grey = line if line.ndim == 2 else cv2.cvtColor(line, cv2.COLOR_BGR2GRAY)
    middle = grey[grey.shape[0] // 5: grey.shape[0] * 4 // 5].astype(np.int16)
    contrast = (middle.max(axis=0) - middle.min(axis=0)).astype(np.float32)
    return np.convolve(contrast, np.ones(5, np.float32) / 5, mode="same")


def pack_batch(crops: list[np.ndarray], height: int, width: int,
               widths: list[int] | None = None) -> np.ndarray:
    """Resize each crop to `height` (its own width, or `widths[i]`), normalise to [-1, 1],
    and pad with zeros to `width`. Returns NCHW float32; a grey crop fills all three channels."""
    batch = np.zeros((len(crops), 3, height, width), np.float32)
    for i, crop in enumerate(crops):
        w = widths[i] if widths else scaled_width(crop, height, width)
        resized = cv2.resize(crop, (w, height), interpolation=cv2.INTER_LINEAR)
        planes = resized.transpose(2, 0, 1) if resized.ndim == 3 else resized[np.newaxis]
        batch[i, :, :, :w] = planes * (2.0 / 255.0) - 1.0
    return batch
