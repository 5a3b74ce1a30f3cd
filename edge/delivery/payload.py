"""Every MQTT message the daemon sends, built here and nowhere else.

Each body has `schema` (its version) and validates against the JSON Schema of the same name in
`edge/schemas/`. Results and errors share one envelope: a stable `id` (the same content read on
the same device gives the same id, so subscribers can drop re-sends) and a `seq` the outbox
assigns, increasing for as long as the outbox file lives.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Optional

from edge.errors import EdgeError
from edge.frames import Frame, OcrResult, SourceRef

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Topics:
    """The daemon's topics: `<prefix>/<device>/<leaf>`; never built from file names."""

    prefix: str
    device: str

    def leaf(self, name: str) -> str:
        """`<prefix>/<device>/<name>`."""
        return f"{self.prefix}/{self.device}/{name}"

    @property
    def results(self) -> str:
        return self.leaf("results")

    @property
    def errors(self) -> str:
        return self.leaf("errors")

    @property
    def status(self) -> str:
        return self.leaf("status")

    @property
    def health(self) -> str:
        return self.leaf("health")

    @property
    def commands(self) -> str:
        """Subscription filter of the commands (`cmd/<name>`)."""
        return self.leaf("cmd/+")

    @property
    def replies(self) -> str:
        """Where replies go when a command names no MQTT v5 response topic."""
        return self.leaf("replies")


@dataclass(frozen=True)
class Envelope:
    """What every result and error message of this daemon carries."""

    device: str
    models: dict[str, str]


def content_id(device: str, frame: Frame) -> str:
    """Stable id: the device and the frame's bytes (or, for camera frames, camera and time)."""
    digest = hashlib.sha256(device.encode())
    if frame.data is not None:
        digest.update(frame.data)
    else:
        digest.update(f"{frame.source.name}\0{frame.key}".encode())
    return digest.hexdigest()[:32]


def result_body(envelope: Envelope, frame: Frame, result: OcrResult) -> dict[str, Any]:
    """The `results` message (without `seq`, which the outbox assigns)."""
    body = _common(envelope, frame)
    body.update({
        "image": {"width": result.width, "height": result.height,
                  "decoded_scale": result.decoded_scale},
        "lines": [{"text": line.text, "score": line.score,
                   "box": [[x, y] for x, y in line.box]} for line in result.lines],
        "text": result.text,
        "timing_ms": dict(result.timings_ms),
    })
    return body


def error_body(envelope: Envelope, frame: Frame, error: EdgeError) -> dict[str, Any]:
    """The `errors` message: the envelope and what went wrong."""
    body = _common(envelope, frame)
    body["error"] = {"code": error.code, "message": error.message, "attempt": frame.attempt}
    return body


def status_body(device: str, state: str) -> bytes:
    """Retained availability: online, offline (the last will) or stopped."""
    return encode({"schema": SCHEMA_VERSION, "device": device, "state": state, "at": _now()})


def reply_body(command: str, ok: bool, result: Optional[dict] = None,
               error: Optional[EdgeError] = None) -> bytes:
    """A command's reply: `ok`, and the result or the error."""
    body: dict[str, Any] = {"schema": SCHEMA_VERSION, "command": command, "ok": ok}
    if result is not None:
        body["result"] = result
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    return encode(body)


def health_body(device: str, snapshot: dict[str, Any]) -> bytes:
    """The retained health message around a snapshot of the service's counters."""
    return encode({"schema": SCHEMA_VERSION, "device": device, "at": _now(), **snapshot})


def encode(body: dict[str, Any], seq: Optional[int] = None) -> bytes:
    """Compact UTF-8 JSON; `seq` is added when given."""
    if seq is not None:
        body = {**body, "seq": seq}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def printable(name: str) -> str:
    """A file name as valid UTF-8 text: undecodable bytes become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _common(envelope: Envelope, frame: Frame) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "id": content_id(envelope.device, frame),
            "device": envelope.device, "source": _source(frame.source),
            "models": dict(envelope.models), "created_at": _now(),
            "captured_at": _iso(frame.captured_at)}


def _source(ref: SourceRef) -> dict[str, str]:
    return {"type": ref.kind, "name": printable(ref.name), "item": printable(ref.item)}


def _now() -> str:
    return _iso(time.time())


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{int(seconds % 1 * 1000):03d}Z"
