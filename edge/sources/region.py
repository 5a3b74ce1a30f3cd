"""A camera's region of interest: the part of each frame that is watched and read.

The region's bounding rectangle, clipped to the frame, is cut out, so the engine decodes, detects
and reads only that. Inside a polygon's rectangle, each pixel outside the polygon takes the colour
of the nearest pixel inside it (the polygon's edge replicated outwards). Measured on street scenes
with signage against flat fills: a flat fill, black or the median colour of the region, draws an
edge along the polygon that the detector takes for text, and next to a large flat mid-tone area
the (int8) detector misses real text inside the polygon; the replicated edge had the fewest false
lines at the border and found the most text inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge.config import CameraRegion
from edge.errors import CameraError
from edge.frames import Placement


@dataclass(frozen=True)
class Cut:
    """A region cut from one frame: its pixels, which of them lie inside the region (255; None
    when all do), and where it was cut from (None: it is the whole frame)."""

    pixels: np.ndarray
    inside: Optional[np.ndarray]
    placement: Optional[Placement]


@dataclass(frozen=True)
class _Window:
    """The region fitted to one frame size: the clipped rectangle, the polygon's mask in it, and
    for each pixel outside the polygon (flat index) the nearest pixel inside it."""

    left: int
    top: int
    right: int
    bottom: int
    inside: Optional[np.ndarray] = None
    outside: Optional[np.ndarray] = None
    nearest: Optional[np.ndarray] = None


class RegionCutter:
    """Cuts one camera's region out of its frames; the fit to a frame size is kept until the
    size changes (a camera may come back from a reconnect at another resolution)."""

    def __init__(self, camera: str, region: CameraRegion) -> None:
        self._camera = camera
        self._region = region
        self._size: Optional[tuple[int, int]] = None
        self._window: Optional[_Window] = None

    def __call__(self, frame: np.ndarray) -> Cut:
        """The region of `frame`, copied; CameraError when it lies entirely outside the frame."""
        height, width = frame.shape[:2]
        if self._size != (width, height):
            self._window, self._size = self._fit(width, height), (width, height)
        window = self._window
        pixels = frame[window.top:window.bottom, window.left:window.right].copy()
        if window.inside is not None:
            flat = pixels.reshape(-1, *pixels.shape[2:])
            flat[window.outside] = flat[window.nearest]
        return Cut(pixels, window.inside, Placement(window.left, window.top, width, height))

    def _fit(self, width: int, height: int) -> _Window:
        corners = np.array(self._region.corners(), np.int32)
        polygon = self._region.polygon is not None
        end = 1 if polygon else 0  # a polygon's corner points are pixels; a rectangle's edges
        left, top = (max(0, int(v)) for v in corners.min(axis=0))
        right, bottom = (int(v) for v in np.minimum(corners.max(axis=0) + end, (width, height)))
        if left >= right or top >= bottom:
            raise self._outside(width, height)
        if not polygon:
            return _Window(left, top, right, bottom)
        inside = np.zeros((bottom - top, right - left), np.uint8)
        cv2.fillPoly(inside, [corners - (left, top)], 255)
        if not inside.any():  # the polygon's rectangle reaches into the frame, the polygon not
            raise self._outside(width, height)
        return _Window(left, top, right, bottom, inside, *_nearest_inside(inside))

    def _outside(self, width: int, height: int) -> CameraError:
        return CameraError(f"camera {self._camera}: its region ({self._describe()}) lies "
                           f"outside its {width}x{height} frame; nothing is read",
                           "fix sources.cameras[].region: full-frame pixels from the top-left")

    def _describe(self) -> str:
        region = self._region
        if region.polygon is not None:
            return "polygon " + " ".join(f"{x},{y}" for x, y in region.polygon)
        return f"x {region.x}, y {region.y}, {region.width}x{region.height}"


def whole_frame(frame: np.ndarray) -> Cut:
    """No region: the whole frame, copied."""
    return Cut(frame.copy(), None, None)


def _nearest_inside(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indexes of the pixels outside the mask, and of the pixel inside nearest to each."""
    _, labels = cv2.distanceTransformWithLabels((inside == 0).astype(np.uint8), cv2.DIST_L2,
                                                cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL)
    labels, is_inside = labels.ravel(), inside.ravel() > 0
    source = np.zeros(int(labels.max()) + 1, np.int32)  # each inside pixel has its own label
    source[labels[is_inside]] = np.flatnonzero(is_inside)
    outside = np.flatnonzero(~is_inside).astype(np.int32)
    return outside, source[labels[outside]]
