"""CTC text recognition: upright line crops in, (text, score) out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from edge.ocr.crops import Piece, pack_batch, scaled_width, split_wide

# a batch in; the best class at each time step of the batch and its probability out, each
# flattened over batch x steps
Model = Callable[[np.ndarray], Sequence[np.ndarray]]
# columns by which the model reads a character after the columns it covers; measured on 10 A4
# scans with lines read in pieces of 328 columns: words F1 0.9395 with 0, 0.9436 with 4 and
# 0.9404 with 8 (0.9476 with whole lines)
EMISSION_LAG = 4.0


@dataclass(frozen=True)
class RecognizerSettings:
    """Batching of the recogniser.

    Crops are sorted by width, rounded up to `width_multiple`, and a batch holds crops of one
    rounded width only: the model's attention and channel gates take in the whole input width,
    padding included, so a line padded out to a wider neighbour read differently from the same
    line alone (small pack, int8 variant, 100 receipts: 148 of 5067 lines; words F1 0.9049
    against 0.9009 with batches of mixed widths, 0.9496 against 0.9455 on 10 A4 scans, 0.9349
    against 0.936 on 40 street scenes; recognition 2.4 % slower summed; the tiny pack with the
    Latin set 0.8391 against 0.8394 on the receipts, 0.8803 against 0.8875 on the scans).

    A line wider than `max_width` is read in pieces that overlap by `context` columns, and each
    piece's reading counts only away from its cuts. `max_columns` caps batch size times padded
    width, the recogniser's working memory: wide lines then go in smaller batches. Its default
    bounds the output layer's tensors (batch x width/8 x classes floats) to 15 MB each with
    18710 classes, where a batch of four 1600-wide lines makes them 60 MB each.
    """

    height: int = 48
    min_width: int = 0
    max_width: int = 1600
    width_multiple: int = 8
    batch_size: int = 4
    max_columns: int = 1600
    context: int = 48


@dataclass(frozen=True)
class Steps:
    """The model's reading of one crop: the best class and its probability at each time step
    (the padding's included), and the input columns a step covers."""

    classes: np.ndarray
    confidence: np.ndarray
    stride: float


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
        split = [split_wide(c, settings.height, settings.max_width, settings.context)
                 for c in crops]
        inputs = [image for crop, pieces in zip(crops, split)
                  for image in ([p.pixels for p in pieces] or [crop])]
        steps = iter(self._read(inputs))
        return [self._text(_stitched([(next(steps), p) for p in pieces]) if pieces
                           else next(steps)) for pieces in split]

    def _read(self, crops: list[np.ndarray]) -> list[Steps]:
        """The model's reading of each crop."""
        settings = self._settings
        widths = [scaled_width(c, settings.height, settings.max_width) for c in crops]
        order = np.argsort(widths, kind="stable")
        results: list[Steps | None] = [None] * len(crops)
        for index in self._batches(order, widths):
            batch_widths = [widths[i] for i in index]
            width = self._bucket(max(batch_widths))
            batch = pack_batch([crops[i] for i in index], settings.height, width, batch_widths)
            classes, probability = (values.reshape(len(index), -1)
                                    for values in self._model(batch))
            stride = width / classes.shape[1]
            for i, best, confidence in zip(index, classes, probability):
                results[i] = Steps(best, confidence, stride)
        return results  # type: ignore[return-value]

    def _batches(self, order: np.ndarray, widths: list[int]) -> Iterator[list[int]]:
        """Runs of the width-sorted order of one rounded width, each within batch_size and
        max_columns."""
        size, columns = self._settings.batch_size, self._settings.max_columns
        batch: list[int] = []
        batch_width = 0
        for i in order:
            width = self._bucket(widths[i])
            if batch and (width != batch_width or len(batch) == size
                          or (columns and width * (len(batch) + 1) > columns)):
                yield batch
                batch = []
            batch.append(int(i))
            batch_width = width
        if batch:
            yield batch

    def _bucket(self, width: int) -> int:
        multiple = self._settings.width_multiple
        width = max(self._settings.min_width, math.ceil(width / multiple) * multiple)
        return min(self._settings.max_width, width)

    def _text(self, steps: Steps) -> Recognition:
        """Greedy CTC: repeats merged, blanks dropped."""
        classes, confidence = steps.classes, steps.confidence
        keep = classes != 0
        keep[1:] &= classes[1:] != classes[:-1]
        chars = self._charset[classes[keep]]
        score = float(confidence[keep].mean()) if keep.any() else 0.0
        return Recognition("".join(chars), score)


def _stitched(read: list[tuple[Steps, Piece]]) -> Steps:
    """One line's time steps from its pieces': of each piece, the steps of the columns it
    keeps. The model reads a character a little after the columns it covers (EMISSION_LAG), so
    a cut between two pieces is moved by as much in the steps."""
    classes, confidence = [], []
    for steps, piece in read:
        centres = (np.arange(len(steps.classes)) + 0.5) * steps.stride - EMISSION_LAG
        first = piece.keep_from if piece.keep_from > 0 else -np.inf
        last = piece.keep_to if piece.keep_to < piece.pixels.shape[1] else np.inf
        kept = (centres >= first) & (centres < last)
        classes.append(steps.classes[kept])
        confidence.append(steps.confidence[kept])
    return Steps(np.concatenate(classes), np.concatenate(confidence), read[0][0].stride)
