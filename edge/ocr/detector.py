"""DB text detection: image in, 4-point text boxes out (in the pixels of the image given)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

Model = Callable[[np.ndarray], np.ndarray]
# model metadata naming the (scale, zero point) of a model that takes its input quantized
INPUT_QUANTIZATION = "edge-ocr.input_quantization"
_DILATION = np.ones((2, 2), np.uint8)


@dataclass(frozen=True)
class DetectorSettings:
    """Pre- and post-processing of the DB detector.

    `min_side` upscales small images until their shorter side reaches it (small print is found
    more reliably); `limit_side` caps the longest side fed to the model and wins over min_side, as
    does `max_pixels`, a cap on the input's area that a RAM budget sets;
    `thresh` binarises the probability map; `box_thresh` drops boxes whose mean probability is
    lower; `unclip_ratio` grows each shrunk text kernel back to the whole line.
    `input_quantization` is the (scale, zero point) of a model that takes its input already
    quantized to uint8 (the int8 variant); None for a model that takes float32.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    multiple: int = 32
    min_side: int = 0
    limit_side: int = 1280
    max_pixels: int = 0  # cap on the model input's area (a RAM budget); 0 = none
    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    dilate: bool = True
    min_box_side: float = 3.0
    max_candidates: int = 1000
    input_quantization: Optional[tuple[float, int]] = None


class Detector:
    """Finds text lines; returns an (N, 4, 2) float32 array of clockwise quads from top-left."""

    def __init__(self, model: Model, settings: DetectorSettings) -> None:
        self._model = model
        self._settings = settings
        self._offset = np.array(settings.mean, np.float32) * 255.0
        self._factor = 1.0 / (np.array(settings.std, np.float32) * 255.0)
        self._table = (None if settings.input_quantization is None else
                       _quantization_table(self._offset, self._factor,
                                           *settings.input_quantization))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Detect text in a BGR image."""
        tensor, scale_x, scale_y = self.preprocess(image)
        boxes = self._boxes(self._model(tensor)[0, 0])
        if len(boxes):
            boxes[:, :, 0] = np.clip(boxes[:, :, 0] * scale_x, 0, image.shape[1] - 1)
            boxes[:, :, 1] = np.clip(boxes[:, :, 1] * scale_y, 0, image.shape[0] - 1)
        return boxes

    @property
    def threshold(self) -> float:
        """Probability above which a pixel counts as text."""
        return self._settings.thresh

    def probability(self, image: np.ndarray) -> np.ndarray:
        """The model's text probability map for a BGR image (at the model's input size)."""
        return self._model(self.preprocess(image)[0])[0, 0]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Resize to multiples of `multiple` within `limit_side`, normalise; NCHW float32, or
        NCHW uint8 for a model that takes its input quantized."""
        height, width = image.shape[:2]
        ratio = max(1.0, self._settings.min_side / min(height, width))
        ratio = min(ratio, self._settings.limit_side / max(height, width))
        if self._settings.max_pixels:
            ratio = min(ratio, math.sqrt(self._settings.max_pixels / (height * width)))
        new_h = self._round(height * ratio)
        new_w = self._round(width * ratio)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if self._table is not None:
            # normalising and quantizing map each 8-bit value to one 8-bit value: a table
            # look-up per channel, and no float32 copy of the image (four times its size)
            tensor = np.empty((1, 3, new_h, new_w), np.uint8)
            for channel, plane in enumerate(cv2.split(resized)):
                cv2.LUT(plane, self._table[channel], dst=tensor[0, channel])
            return tensor, width / new_w, height / new_h
        # one channel plane at a time, straight into a contiguous NCHW tensor: no float copies
        # of the whole image on the way (they were the largest allocations outside the model)
        tensor = np.empty((1, 3, new_h, new_w), np.float32)
        for channel in range(3):
            plane = tensor[0, channel]
            np.subtract(resized[:, :, channel], self._offset[channel], out=plane)
            plane *= self._factor[channel]
        return tensor, width / new_w, height / new_h

    def _round(self, side: float) -> int:
        multiple = self._settings.multiple
        return max(multiple, int(round(side / multiple)) * multiple)

    def _boxes(self, prob: np.ndarray) -> np.ndarray:
        settings = self._settings
        bitmap = (prob > settings.thresh).astype(np.uint8)
        if settings.dilate:  # joins kernels split by a thin gap, and widens boxes by a pixel
            bitmap = cv2.dilate(bitmap, _DILATION)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for contour in contours[: settings.max_candidates]:
            box = self._box_from_contour(contour, prob)
            if box is not None:
                boxes.append(box)
        return np.array(boxes, np.float32).reshape(-1, 4, 2)

    def _box_from_contour(self, contour: np.ndarray, prob: np.ndarray) -> np.ndarray | None:
        settings = self._settings
        center, (w, h), angle = cv2.minAreaRect(contour)
        if min(w, h) < settings.min_box_side:
            return None
        if _mean_inside(prob, cv2.boxPoints((center, (w, h), angle))) < settings.box_thresh:
            return None
        grow = w * h * settings.unclip_ratio / (2.0 * (w + h))
        w, h = w + 2 * grow, h + 2 * grow
        if min(w, h) < settings.min_box_side + 2:
            return None
        return order_clockwise(cv2.boxPoints((center, (w, h), angle)))


def input_quantization(metadata: dict) -> Optional[tuple[float, int]]:
    """The (scale, zero point) a model's metadata gives for its quantized input, or None."""
    if INPUT_QUANTIZATION not in metadata:
        return None
    scale, zero_point = metadata[INPUT_QUANTIZATION].split()
    return float(scale), int(zero_point)


def _quantization_table(offset: np.ndarray, factor: np.ndarray, scale: float,
                        zero_point: int) -> np.ndarray:
    """For each channel, the uint8 that normalising ((value - offset) * factor) then quantizing
    turns each pixel value into (rounded half to even and saturated, as ONNX QuantizeLinear
    does)."""
    values = np.arange(256, dtype=np.float32)[:, np.newaxis]
    normalised = (values - offset) * factor
    quantized = np.rint(normalised / np.float32(scale)) + zero_point
    return np.ascontiguousarray(np.clip(quantized, 0, 255).astype(np.uint8).T)  # (3, 256)


def order_clockwise(points: np.ndarray) -> np.ndarray:
    """Order four points as top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1], kind="stable")]
    top_right, bottom_right = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([top_left, top_right, bottom_right, bottom_left], np.float32)


def _mean_inside(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside a polygon, computed on its bounding rectangle only."""
    height, width = prob.shape
    x0 = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    shifted = box - np.array([x0, y0], np.float32)
    cv2.fillPoly(mask, [shifted.round().astype(np.int32)], 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])
