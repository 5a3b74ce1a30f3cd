"""Annotated copies of images: each line's box and its text, for people to check a reading.

`edge-ocr ocr --draw` writes them to files; the status page shows them.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.frames import OcrResult

_BOX = (0, 160, 255)
_INK = (20, 20, 200)


def draw_result(image: np.ndarray, result: OcrResult, scale: float = 1.0,
                origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Copy of the image with boxes and text drawn; result pixels map to image pixels as
    (result - origin) / scale (`origin`: where the image was cut from a larger frame)."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 800))
    for line in result.lines:
        points = ((np.array(line.box, np.float32) - origin) / scale).round().astype(np.int32)
        cv2.polylines(canvas, [points], True, _BOX, thickness, cv2.LINE_AA)
        height = max(8.0, float(np.linalg.norm(points[3] - points[0])))
        font_scale = min(1.2, height / 40.0)
        origin = (int(points[0][0]), max(10, int(points[0][1]) - 3))
        label = line.text.encode("ascii", "replace").decode()  # Hershey fonts have ASCII only
        cv2.putText(canvas, label, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, _INK, thickness,
                    cv2.LINE_AA)
    return canvas
