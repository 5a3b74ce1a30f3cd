"""0/180-degree line classifier: turns upside-down crops the right way up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge.ocr.crops import pack_batch

Model = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ClassifierSettings:
    """Input shape of the classifier and the confidence needed to flip a crop."""

    height: int = 48
    width: int = 192
    flip_threshold: float = 0.9
    batch_size: int = 8


class Classifier:
    """Returns the crops, each turned 180 degrees where the model is confident it is upside down."""

    def __init__(self, model: Model, settings: ClassifierSettings) -> None:
        self._model = model
        self._settings = settings

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Classify and fix the orientation of line crops."""
        settings = self._settings
        upright = list(crops)
        for start in range(0, len(crops), settings.batch_size):
            chunk = crops[start:start + settings.batch_size]
            probs = self._model(pack_batch(chunk, settings.height, settings.width))
            for offset, (_, p180) in enumerate(probs):
                if p180 > settings.flip_threshold:
                    upright[start + offset] = np.rot90(chunk[offset], 2).copy()
        return upright
