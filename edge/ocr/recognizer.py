"""CTC text recognition: upright line crops in, (text, score) out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from edge.ocr.crops import pack_batch, scaled_width

Model = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RecognizerSettings:
    """Batching of the recogniser.

    Crops are sorted by width and batched; each batch is padded to a width rounded up to
    `width_multiple`, so few distinct input shapes reach the runtime. `max_width` caps very long
    lines (they are squeezed, not cut). `max_columns` caps batch size times padded width, the
    recogniser's working memory: wide lines then go in smaller batches. Its default bounds the
    output layer's tensors (batch x width/8 x classes floats) to 15 MB each with 18710 classes,
    where a batch of four 1600-wide lines makes them 60 MB each.
    """

    height: int = 48
    min_width: int = 0
    max_width: int = 1600
    width_multiple: int = 8
    batch_size: int = 4
    max_columns: int = 1600


@dataclass(frozen=True)
class Recognition:
    """Text of one crop and the mean probability of its characters (0 for no text)."""

    text: str
    score: float


class Recognizer:
    """Reads each crop with the CTC model and a greedy decoder."""

    def __init__(self, model: Model, charset: Sequence[str], settings: RecognizerSettings) -> None:
        self._model = model
        self._settings = settings
        # index 0 is the CTC blank; the dictionary is followed by a space
        self._charset = np.array(["", *charset, " "], dtype=object)

    def __call__(self, crops: list[np.ndarray]) -> list[Recognition]:
        """Recognise every crop; the result list matches the input order."""
        settings = self._settings
        widths = [scaled_width(c, settings.height, settings.max_width) for c in crops]
        order = np.argsort(widths, kind="stable")
        results: list[Recognition | None] = [None] * len(crops)
        for index in self._batches(order, widths):
            batch_widths = [widths[i] for i in index]
            width = self._bucket(max(batch_widths))
            batch = pack_batch([crops[i] for i in index], settings.height, width, batch_widths)
            for i, recognition in zip(index, self._decode(self._model(batch))):
                results[i] = recognition
        return results  # type: ignore[return-value]

    def _batches(self, order: np.ndarray, widths: list[int]) -> Iterator[list[int]]:
        """Runs of the width-sorted order, each within batch_size and max_columns."""
        size, columns = self._settings.batch_size, self._settings.max_columns
        batch: list[int] = []
        for i in order:
            wider = self._bucket(widths[i]) * (len(batch) + 1)
            if batch and (len(batch) == size or (columns and wider > columns)):
                yield batch
                batch = []
            batch.append(int(i))
        if batch:
            yield batch

    def _bucket(self, width: int) -> int:
        multiple = self._settings.width_multiple
        width = max(self._settings.min_width, math.ceil(width / multiple) * multiple)
        return min(self._settings.max_width, width)

    def _decode(self, probs: np.ndarray) -> list[Recognition]:
        """Greedy CTC: best class per step, repeats merged, blanks dropped."""
        best = probs.argmax(axis=2)
        confidence = probs.max(axis=2)
        out = []
        for classes, conf in zip(best, confidence):
            keep = classes != 0
            keep[1:] &= classes[1:] != classes[:-1]
            chars = self._charset[classes[keep]]
            score = float(conf[keep].mean()) if keep.any() else 0.0
            out.append(Recognition("".join(chars), score))
        return out
