"""Line crops: cut a quad out of the image upright, split lines too wide to read at once, and
pack crops into model batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

VERTICAL_RATIO = 1.5  # a crop this many times taller than wide is a vertical line
EMPTY_CONTRAST = 0.3  # a column under this share of the line's median contrast holds no ink


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


def turned(crop: np.ndarray) -> np.ndarray:
    """The crop turned 180 degrees (a contiguous copy, as OpenCV wants)."""
    return np.ascontiguousarray(crop[::-1, ::-1])


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
    (`context` columns of each neighbour included). Each cut falls at the end of the widest
    gap of its stretch (between words where there is one, else between letters): the piece
    before it keeps the gap, and with it the space the model reads there. A line that fits
    gives no pieces."""
    width = math.ceil(height * crop.shape[1] / crop.shape[0])
    if width <= max_width:
        return []
    line = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    context = min(context, max_width // 4)
    contrast = _contrast(line)
    empty = contrast <= EMPTY_CONTRAST * np.median(contrast)
    stretch = max_width - 2 * context
    cuts = [0]
    while width - cuts[-1] + context > max_width:
        low = cuts[-1] + stretch // 2
        cuts.append(low + _widest_gap(empty[low:cuts[-1] + stretch], contrast[low:]))
    cuts.append(width)
    pieces = []
    for start, end in zip(cuts, cuts[1:]):
        left, right = max(0, start - context), min(width, end + context)
        pieces.append(Piece(line[:, left:right], start - left, end - left))
    return pieces


def _contrast(line: np.ndarray) -> np.ndarray:
    """Each column's contrast (brightest minus darkest pixel), the crop's top and bottom
    eighths left out (a neighbouring line's ink may reach into them)."""
    grey = line if line.ndim == 2 else cv2.cvtColor(line, cv2.COLOR_BGR2GRAY)
    middle = grey[grey.shape[0] // 8: grey.shape[0] * 7 // 8].astype(np.int16)
    return (middle.max(axis=0) - middle.min(axis=0)).astype(np.float32)


def _widest_gap(empty: np.ndarray, contrast: np.ndarray) -> int:
    """The column after the longest run of empty columns, or the column of least contrast
    where none is empty."""
    best, run_start, best_len = -1, 0, 0
    for column, is_empty in enumerate([*empty, False]):
        if not is_empty:
            if column - run_start > best_len:
                best, best_len = column, column - run_start
            run_start = column + 1
    return best if best >= 0 else int(np.argmin(contrast[:len(empty)]))


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
