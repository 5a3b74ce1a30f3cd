"""`edge-ocr ocr --draw DIR`: annotated copies of the input images, written to a folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.daemon.annotate import draw_result
from edge.errors import DrawingError
from edge.frames import OcrResult


def write_drawing(folder: Path, name: str, image: np.ndarray, result: OcrResult,
                  scale: float) -> Path:
    """Write the annotated image as `<folder>/<stem>.ocr.jpg`."""
    dest = folder / f"{Path(name).stem}.ocr.jpg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(dest), draw_result(image, result, scale))
    except (OSError, cv2.error) as exc:
        raise DrawingError(f"cannot write {dest}: {exc}") from exc
    if not written:
        raise DrawingError(f"cannot write {dest}", f"check that {folder} is a writable folder")
    return dest
