"""Commands over MQTT: `ocr`, `status`, `rescan`, `retry-failed`.

They arrive on paho's network thread, so nothing here waits: `ocr` is offered to the worker's
queue (a full queue is a `busy` reply) and answered by the worker when done; the others answer
at once. Whatever is malformed gets an error reply, and nothing else happens.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from edge.delivery import payload
from edge.delivery.mqtt import Command, MqttLink
from edge.delivery.payload import Envelope
from edge.errors import CommandError, EdgeError, InternalError
from edge.frames import Frame, OcrResult, SourceRef
from edge.sources.queue import Job, WorkQueue

log = logging.getLogger(__name__)

MAX_OCR_BYTES = 32 * 1024 * 1024


class CommandOwner:
    """Owns the frame of one `ocr` command: its result or error goes back as the reply."""

    def __init__(self, link: MqttLink, command: Command, envelope: Envelope) -> None:
        self._link = link
        self._command = command
        self._envelope = envelope

    def begin(self, frame: Frame) -> Frame:
        """Nothing to record: the frame is taken as it is."""
        return frame

    def load(self, frame: Frame) -> bytes:
        """The image bytes of the command's payload."""
        return frame.data

    def deliver(self, frame: Frame, result: OcrResult) -> None:
        """Reply with the result message's body."""
        body = payload.result_body(self._envelope, frame, result)
        self._link.reply(self._command, payload.reply_body("ocr", True, result=body))

    def reject(self, frame: Frame, error: EdgeError) -> None:
        """Reply with the error."""
        self._link.reply(self._command, payload.reply_body("ocr", False, error=error))


class Commands:
    """Dispatches received commands; every one gets exactly one reply."""

    def __init__(self, link: MqttLink, queue: WorkQueue, envelope: Envelope,
                 status: Callable[[], dict[str, Any]], rescan: Callable[[], None],
                 retry_failed: Callable[[], int]) -> None:
        self._link = link
        self._queue = queue
        self._envelope = envelope
        self._handlers: dict[str, Callable[[Command], dict[str, Any] | None]] = {
            "ocr": self._ocr,
            "status": lambda command: status(),
            "rescan": lambda command: rescan() or {},
            "retry-failed": lambda command: {"requeued": retry_failed()},
        }

    def __call__(self, command: Command) -> None:
        """Handle one command (on the network thread)."""
        try:
            handler = self._handlers.get(command.name)
            if handler is None:
                raise CommandError(f"unknown command {command.name!r}; known: "
                                   f"{', '.join(sorted(self._handlers))}")
            if command.name != "ocr":
                _options(command.body)
            result = handler(command)
        except EdgeError as exc:
            log.warning("command %r refused: %s", command.name, exc.message)
            self._safe_reply(command, payload.reply_body(command.name, False, error=exc))
            return
        except Exception as exc:  # noqa: BLE001  on paho's thread: never let it escape
            log.exception("command %r failed", command.name)
            error = InternalError(f"{type(exc).__name__}: {exc}")
            self._safe_reply(command, payload.reply_body(command.name, False, error=error))
            return
        if result is not None:
            self._safe_reply(command, payload.reply_body(command.name, True, result=result))

    def _ocr(self, command: Command) -> None:
        if not command.body:
            raise CommandError("ocr needs the image's bytes as the payload")
        if len(command.body) > MAX_OCR_BYTES:
            raise CommandError(f"ocr payload over {MAX_OCR_BYTES} bytes")
        correlation = (command.correlation or b"").hex()
        frame = Frame(SourceRef("command", "ocr", correlation), correlation, time.time(),
                      data=command.body)
        if not self._queue.offer(Job(frame, CommandOwner(self._link, command, self._envelope))):
            raise CommandError("busy: the frame queue is full; try again shortly")
        return None

    def _safe_reply(self, command: Command, body: bytes) -> None:
        try:
            self._link.reply(command, body)
        except EdgeError as exc:
            log.warning("cannot reply to %r: %s", command.name, exc.message)


def _options(body: bytes) -> dict[str, Any]:
    """A command's payload: empty, or a JSON object."""
    if not body.strip():
        return {}
    try:
        options = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"payload is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise CommandError("payload must be a JSON object")
    return options
