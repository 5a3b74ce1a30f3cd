"""Line crops: cut a quad out of the image upright, and pack crops into model batches."""

from __future__ import annotations

import math

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
