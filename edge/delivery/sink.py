"""Where results and errors of spool files and cameras go: the outbox, then the broker."""

from __future__ import annotations

from typing import Callable

from edge.delivery import payload
from edge.delivery.outbox import Outbox
from edge.delivery.payload import Envelope, Topics
from edge.errors import EdgeError
from edge.frames import Frame, OcrResult


class ResultSink:
    """Writes result and error messages to the outbox and wakes the delivery."""

    def __init__(self, outbox: Outbox, topics: Topics, envelope: Envelope,
                 wake: Callable[[], None]) -> None:
        self._outbox = outbox
        self._topics = topics
        self._envelope = envelope
        self._wake = wake

    def result(self, frame: Frame, result: OcrResult) -> int:
        """Queue a result durably; returns its sequence number."""
        body = payload.result_body(self._envelope, frame, result)
        return self._put(self._topics.results, body)

    def error(self, frame: Frame, error: EdgeError) -> int:
        """Queue an error message durably; returns its sequence number."""
        body = payload.error_body(self._envelope, frame, error)
        return self._put(self._topics.errors, body)

    def _put(self, topic: str, body: dict) -> int:
        seq = self._outbox.put(topic, body["id"], body)
        self._wake()
        return seq
