"""0/180-degree page orientation: whether the lines of a page are upside down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge.ocr.crops import pack_batch

Model = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ClassifierSettings:
    """Input shape of the classifier and how many lines vote on a page's orientation.

    A page is upside down when more than half of its `sample` widest lines read as upside down;
    then every line is turned, otherwise none. Turning lines one by one wherever the model was
    confident turned right lines over as well. Measured (small pack) on 100 receipts, 10 A4
    scans and 40 street scenes, words F1 line by line 0.9049 / 0.9496 / 0.9349 against
    0.9106 / 0.9522 / 0.9392 by page; the same images turned upside down 0.8307 / 0.9013 /
    0.7012 against 0.9097 / 0.9497 / 0.8751. A page whose lines face both ways is read the way
    most of them face.
    """

    height: int = 48
    width: int = 192
    sample: int = 8


class Classifier:
    """Decides from a vote of its widest lines whether a page is upside down."""

    def __init__(self, model: Model, settings: ClassifierSettings) -> None:
        self._model = model
        self._settings = settings

    def __call__(self, crops: list[np.ndarray]) -> bool:
        """True when the page these line crops were cut from is upside down."""
        settings = self._settings
        widest = sorted(crops, key=lambda crop: crop.shape[1], reverse=True)[:settings.sample]
        if not widest:
            return False
        probs = self._model(pack_batch(widest, settings.height, settings.width))
        upside_down = int(np.count_nonzero(probs[:, 1] > probs[:, 0]))
        return 2 * upside_down > len(widest)
