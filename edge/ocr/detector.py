"""DB text detection: image in, 4-point text boxes out (in the pixels of the image given).

Under a RAM budget the model's input area is capped (`max_pixels`), but the scale is not: an
image whose input would be larger is run through the model in overlapping tiles at the same
scale, and the tiles' probability maps are stitched into one map before boxes are traced, so a
line that crosses a tile border comes back once and whole. Each pixel of the map comes from
the tile in which it lies farthest from a cut edge (at least `TILE_MARGIN` pixels from it).
With `GlobalMeans`, every tile runs with the means the model takes over the whole input.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

Model = Callable[[np.ndarray], np.ndarray]
Means = list[np.ndarray]
Spans = list[tuple[int, int, tuple[int, int]]]  # tiles along one side: start, end, kept part
# model metadata naming the (scale, zero point) of a model that takes its input quantized
INPUT_QUANTIZATION = "edge-ocr.input_quantization"
# model metadata naming the side of the pixel blocks a model takes its input in (see
# `pixel_blocks`); absent for a model that takes planes (N, C, H, W)
INPUT_BLOCKS = "edge-ocr.input_blocks"
_DILATION = np.ones((2, 2), np.uint8)
TILE_MARGIN = 32  # model-input pixels of context kept on each side of a cut between tiles


@dataclass(frozen=True)
class DetectorSettings:
    """Pre- and post-processing of the DB detector.

    `min_side` upscales small images until their shorter side reaches it (small print is found
    more reliably); `limit_side` caps the longest side fed to the model and wins over min_side;
    `max_pixels`, a cap on the area of one model run that a RAM budget sets, tiles the input;
    `thresh` binarises the probability map; `box_thresh` drops boxes whose mean probability is
    lower; `unclip_ratio` grows each shrunk text kernel back to the whole line; `end_pad` then
    lengthens a box tilted at least `end_pad_tilt` degrees by that fraction of its thickness at
    each end: on tilted and foreshortened lines the probability map stops short of the first and
    last characters, while level lines (receipts) are boxed whole and a longer box only takes in
    the next column.
    `input_quantization` is the (scale, zero point) of a model that takes its input already
    quantized to uint8 (the int8 variant); None for a model that takes float32.
    `input_blocks` is 2 for such a model that takes the quantized image in 2x2 pixel blocks
    (`pixel_blocks`), 1 for one that takes it in planes.
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
    end_pad: float = 0.0
    end_pad_tilt: float = 2.0
    dilate: bool = True
    min_box_side: float = 3.0
    max_candidates: int = 1000
    input_quantization: Optional[tuple[float, int]] = None
    input_blocks: int = 1


@dataclass(frozen=True)
class GlobalMeans:
    """The detector model run around the means it takes over its whole input (see
    `edge.models.detgates`): `measure` runs an input and returns those means, `given` runs an
    input with the means given. Tiles then all see the means of the whole input."""

    measure: Callable[[np.ndarray], Means]
    given: Callable[[np.ndarray, Means], np.ndarray]


class Detector:
    """Finds text lines; returns an (N, 4, 2) float32 array of clockwise quads from top-left."""

    def __init__(self, model: Model, settings: DetectorSettings,
                 means: Optional[GlobalMeans] = None) -> None:
        """`means`, where given, runs tiles with the means of the whole input (two passes)."""
        self._model = model
        self._means = means
        self._settings = settings
        self._offset = np.array(settings.mean, np.float32) * 255.0
        self._factor = 1.0 / (np.array(settings.std, np.float32) * 255.0)
        self._table = (None if settings.input_quantization is None else
                       _quantization_table(self._offset, self._factor,
                                           *settings.input_quantization))
        if settings.input_blocks not in (1, 2) or (
                settings.input_blocks == 2 and (self._table is None or settings.multiple % 2)):
            raise ValueError(f"no detector input in {settings.input_blocks}-pixel blocks with "
                             f"sides a multiple of {settings.multiple}")
        # the same tables as one cv2.LUT pass over a BGR image takes them; or, where one table
        # serves every channel (the packs' mean and std are alike for all three), that one
        self._pixel_table = (None if self._table is None else
                             self._table[0] if (self._table == self._table[0]).all() else
                             np.ascontiguousarray(self._table.T).reshape(1, 256, 3))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Detect text in a BGR (or single-channel) image."""
        width, height = self.input_size(image)
        scale_x, scale_y = image.shape[1] / width, image.shape[0] / height
        boxes = self._boxes(self._probability_map(image, width, height))
        if len(boxes):
            boxes[:, :, 0] = np.clip(boxes[:, :, 0] * scale_x, 0, image.shape[1] - 1)
            boxes[:, :, 1] = np.clip(boxes[:, :, 1] * scale_y, 0, image.shape[0] - 1)
        return boxes

    @property
    def settings(self) -> DetectorSettings:
        """The pre- and post-processing this detector runs with."""
        return self._settings

    @property
    def threshold(self) -> float:
        """Probability above which a pixel counts as text."""
        return self._settings.thresh

    def probability(self, image: np.ndarray) -> np.ndarray:
        """The model's text probability map for a BGR image (at the model's input size), as
        float32 in [0, 1]."""
        prob = self._probability_map(image, *self.input_size(image))
        return prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Resize to multiples of `multiple` within `limit_side`, normalise; NCHW float32, or
        uint8 for a model that takes its input quantized, in pixel blocks for one that takes
        them (one tensor, never tiled)."""
        width, height = self.input_size(image)
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return self._tensor(resized), image.shape[1] / width, image.shape[0] / height

    def tiles(self, image: np.ndarray) -> int:
        """How many model runs the image takes (1 unless `max_pixels` makes it tile)."""
        width, height = self.input_size(image)
        return tile_count(width, height, self._settings.max_pixels, self._settings.multiple)

    def largest_run(self, image: np.ndarray) -> int:
        """Pixels of the largest single model run the image takes (tiles are no larger than
        `max_pixels`, and as small as covering the input with that many allows)."""
        width, height = self.input_size(image)
        return largest_tile(width, height, self._settings.max_pixels, self._settings.multiple)

    def input_size(self, image: np.ndarray) -> tuple[int, int]:
        """(width, height) at the model's scale: multiples of `multiple` within the limits."""
        height, width = image.shape[:2]
        ratio = max(1.0, self._settings.min_side / min(height, width))
        ratio = min(ratio, self._settings.limit_side / max(height, width))
        return self._round(width * ratio), self._round(height * ratio)

    def _probability_map(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """The map for the whole image at (width, height): one model run, or stitched tiles.
        A tile is resampled from the image itself, so no copy of the whole image at the model's
        scale is made."""
        cap = self._settings.max_pixels
        if not cap or height * width <= cap:
            resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            return self._model(self._tensor(resized))[0, 0]
        prob = np.empty((height, width), np.uint8)  # a quarter of float32's size, 1/255 steps
        tiles = list(itertools.product(*_grid(width, height, cap, self._settings.multiple)))
        means = None if self._means is None else self._whole_means(image, width, height, tiles)
        for (y0, y1, keep_y), (x0, x1, keep_x) in tiles:
            # made again rather than kept from the first pass: all of them would hold the input
            tensor = self._tile(image, width, height, x0, x1, y0, y1)
            part = (self._model(tensor) if means is None
                    else self._means.given(tensor, means))[0, 0]
            kept = part[keep_y[0] - y0:keep_y[1] - y0, keep_x[0] - x0:keep_x[1] - x0]
            prob[keep_y[0]:keep_y[1], keep_x[0]:keep_x[1]] = np.rint(kept * 255.0)
        return prob

    def _whole_means(self, image: np.ndarray, width: int, height: int, tiles: list) -> Means:
        """The model's means over the whole input: each tile's, weighted by the part of the
        input it is kept for."""
        total: Means = []
        for (y0, y1, keep_y), (x0, x1, keep_x) in tiles:
            share = (keep_y[1] - keep_y[0]) * (keep_x[1] - keep_x[0]) / (width * height)
            means = self._means.measure(self._tile(image, width, height, x0, x1, y0, y1))
            total = [m * share for m in means] if not total else [
                t + m * share for t, m in zip(total, means)]
        return [mean.astype(np.float32, copy=False) for mean in total]  # what the model takes

    def _tile(self, image: np.ndarray, width: int, height: int, x0: int, x1: int, y0: int,
              y1: int) -> np.ndarray:
        """The model input for one tile, its pixels sampled where a resize of the whole image
        to (width, height) would sample them."""
        scale_x, scale_y = image.shape[1] / width, image.shape[0] / height
        to_source = np.float32([[scale_x, 0, (x0 + 0.5) * scale_x - 0.5],
                                [0, scale_y, (y0 + 0.5) * scale_y - 0.5]])
        tile = cv2.warpAffine(image, to_source, (x1 - x0, y1 - y0),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        return self._tensor(tile)

    def _tensor(self, resized: np.ndarray) -> np.ndarray:
        """NCHW float32, normalised, or uint8 for a model that takes its input quantized (NCHW,
        or in pixel blocks); a single-channel image is repeated into the three channels."""
        if self._settings.input_blocks == 2:
            bgr = resized if resized.ndim == 3 else cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)
            if self._pixel_table.ndim == 3:
                return pixel_blocks(cv2.LUT(bgr, self._pixel_table))
            blocks = pixel_blocks(bgr)
            values = blocks.reshape(blocks.shape[1], -1)  # every byte through the one table
            cv2.LUT(values, self._pixel_table, dst=values)
            return blocks
        new_h, new_w = resized.shape[:2]
        planes = [resized] * 3 if resized.ndim == 2 else cv2.split(resized)
        if self._table is not None:
            # normalising and quantizing map each 8-bit value to one 8-bit value: a table
            # look-up per channel, and no float32 copy of the image (four times its size)
            tensor = np.empty((1, 3, new_h, new_w), np.uint8)
            for channel, plane in enumerate(planes):
                cv2.LUT(np.ascontiguousarray(plane), self._table[channel],
                        dst=tensor[0, channel])
            return tensor
        # one channel plane at a time, straight into a contiguous NCHW tensor: no float copies
        # of the whole image on the way (they were the largest allocations outside the model)
        tensor = np.empty((1, 3, new_h, new_w), np.float32)
        for channel, source in enumerate(planes):
            plane = tensor[0, channel]
            np.subtract(source, self._offset[channel], out=plane)
            plane *= self._factor[channel]
        return tensor

    def _round(self, side: float) -> int:
        multiple = self._settings.multiple
        return max(multiple, int(round(side / multiple)) * multiple)

    def _boxes(self, prob: np.ndarray) -> np.ndarray:
        """Boxes traced on a probability map: float in [0, 1], or uint8 in 1/255 steps."""
        settings = self._settings
        unit = 255.0 if prob.dtype == np.uint8 else 1.0
        bitmap = (prob > settings.thresh * unit).astype(np.uint8)
        if settings.dilate:  # joins kernels split by a thin gap, and widens boxes by a pixel
            bitmap = cv2.dilate(bitmap, _DILATION)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for contour in contours[: settings.max_candidates]:
            box = self._box_from_contour(contour, prob, unit)
            if box is not None:
                boxes.append(box)
        return np.array(boxes, np.float32).reshape(-1, 4, 2)

    def _box_from_contour(self, contour: np.ndarray, prob: np.ndarray, unit: float
                          ) -> np.ndarray | None:
        settings = self._settings
        center, (w, h), angle = cv2.minAreaRect(contour)
        if min(w, h) < settings.min_box_side:
            return None
        mean = _mean_inside(prob, cv2.boxPoints((center, (w, h), angle))) / unit
        if mean < settings.box_thresh:
            return None
        grow = w * h * settings.unclip_ratio / (2.0 * (w + h))
        w, h = w + 2 * grow, h + 2 * grow
        if min(w, h) < settings.min_box_side + 2:
            return None
        if _tilt(w, h, angle) >= settings.end_pad_tilt:
            w, h = _lengthen(w, h, settings.end_pad)
        return order_clockwise(cv2.boxPoints((center, (w, h), angle)))


def _tilt(w: float, h: float, angle: float) -> float:
    """Degrees (0-90) between a rotated rectangle's longer side and the horizontal."""
    tilt = abs(angle if w >= h else angle - 90.0) % 180.0
    return min(tilt, 180.0 - tilt)


def _lengthen(w: float, h: float, pad: float) -> tuple[float, float]:
    """The longer side grown by `pad` times the shorter one at each end."""
    extra = 2.0 * pad * min(w, h)
    return (w + extra, h) if w >= h else (w, h + extra)


def tile_count(width: int, height: int, cap: int, multiple: int = 32) -> int:
    """Model runs for an input of width x height under a tile area cap (0: no cap)."""
    if not cap or width * height <= cap:
        return 1
    rows, columns = _grid(width, height, cap, multiple)
    return len(rows) * len(columns)


def largest_tile(width: int, height: int, cap: int, multiple: int = 32) -> int:
    """Pixels of the largest model run over an input of width x height under a tile area cap
    (0: no cap); every tile of an input is of one size."""
    if not cap or width * height <= cap:
        return width * height
    (y0, y1, _), (x0, x1, _) = (spans[0] for spans in _grid(width, height, cap, multiple))
    return (y1 - y0) * (x1 - x0)


def _grid(width: int, height: int, cap: int, multiple: int) -> tuple[Spans, Spans]:
    """The tiles of an input too large for `cap`: their spans down and across."""
    tile_h, tile_w = _tile_shape(height, width, cap, multiple)
    return _spans(height, tile_h, multiple), _spans(width, tile_w, multiple)


def _tile_shape(height: int, width: int, cap: int, multiple: int) -> tuple[int, int]:
    """Full-width strips when a strip can keep margins around a useful core, else squares."""
    smallest = 4 * TILE_MARGIN
    strip = cap // width // multiple * multiple
    if strip >= smallest:
        return min(strip, height), width
    side = max(smallest, int(math.sqrt(cap)) // multiple * multiple)
    return min(side, height), min(side, width)


def _spans(length: int, tile: int, multiple: int) -> Spans:
    """The fewest tiles of at most `tile` that cover `length` overlapping by at least
    2 * TILE_MARGIN, all of one size (a multiple of `multiple`, the smallest that covers) and
    spread evenly: each as (start, end, (first, last) of the part it is kept for).

    Full-size tiles, the last pushed back over its neighbour, ran 1.28-1.42 times the input's
    pixels on receipts, 1.2-1.5 on A4 scans and 1.09-1.5 on camera frames; even ones 1.08,
    1.13-1.2 and 1.09-1.23, and read as well (small pack, words F1 over tile caps of 0.40-0.60
    MP): receipts 0.9093 against 0.9094 on average, A4 scans 0.9495 against 0.9480, street
    scenes 0.9352-0.936 against 0.9308-0.936."""
    if tile >= length:
        return [(0, length, (0, length))]
    overlap = 2 * TILE_MARGIN
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + overlap * (count - 1)) / count / multiple) * multiple)
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    cuts = [0] + [(nxt + start + size) // 2 for start, nxt in zip(starts, starts[1:])] + [length]
    return [(start, start + size, (cuts[i], cuts[i + 1])) for i, start in enumerate(starts)]


def input_quantization(metadata: dict) -> Optional[tuple[float, int]]:
    """The (scale, zero point) a model's metadata gives for its quantized input, or None."""
    if INPUT_QUANTIZATION not in metadata:
        return None
    scale, zero_point = metadata[INPUT_QUANTIZATION].split()
    return float(scale), int(zero_point)


def input_blocks(metadata: dict) -> int:
    """The side of the pixel blocks a model's metadata says it takes its input in (1: none)."""
    return int(metadata.get(INPUT_BLOCKS, 1))


def pixel_blocks(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image with even sides as a (1, H/2, W/2, 4C) tensor: each 2x2 block of
    pixels along the channels, by block row, then block column, then channel. The pixel pairs
    of a row are already side by side in memory: one merge of the even and odd rows."""
    height, width, channels = image.shape
    rows = (image[start::2].reshape(height // 2, width // 2, 2 * channels) for start in (0, 1))
    return cv2.merge(list(rows))[np.newaxis]


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
