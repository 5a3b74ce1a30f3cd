"""The daemon's loop: sources -> bounded queue -> one worker -> outbox -> MQTT.

The worker is the one place where per-frame errors are reported: a bad frame becomes an error
message, a failed/ file and a counter, never a dead daemon. SIGTERM lets the current frame
finish, flushes the outbox for a few seconds, publishes `stopped` and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, replace
from typing import Any, Optional, Protocol, Sequence

from edge.daemon.budgeted_engine import DaemonEngine
from edge.daemon.intake import Intake
from edge.daemon.notify import Notifier
from edge.daemon.runtime import RuntimeDir
from edge.delivery import payload
from edge.delivery.mqtt import Delivery, MqttLink
from edge.delivery.outbox import Outbox
from edge.delivery.payload import Topics
from edge.errors import EdgeError, InternalError, OutboxError, SpoolError
from edge.frames import DecodedImage, Frame, OcrResult
from edge.sources.queue import Job, WorkQueue

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a file that took the daemon down this often is filed as failed
FLUSH_SECONDS = 3.0


class Source(Protocol):
    """A frame source: it owns its threads."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Extra(Protocol):
    """Something that runs beside the worker (the status page, discovery): started after the
    broker link, stopped last."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Watcher(Protocol):
    """Told of each frame's outcome on the worker thread; must return quickly."""

    def result(self, frame: Frame, image: DecodedImage, result: OcrResult) -> None: ...

    def error(self, frame: Frame, error: EdgeError) -> None: ...


class _NoWatcher:
    def result(self, frame: Frame, image: DecodedImage, result: OcrResult) -> None:
        """Nothing to keep."""

    def error(self, frame: Frame, error: EdgeError) -> None:
        """Nothing to keep."""


class Service:
    """Runs the worker in the calling thread until stopped."""

    def __init__(self, engine: DaemonEngine, queue: WorkQueue, outbox: Outbox, link: MqttLink,
                 delivery: Delivery, sources: list[Source], runtime: RuntimeDir, topics: Topics,
                 health_interval: float, intake: Intake, notifier: Notifier = Notifier(),
                 extras: Sequence[Extra] = (), watcher: Watcher = _NoWatcher()) -> None:
        self._engine = engine
        self._queue = queue
        self._outbox = outbox
        self._link = link
        self._delivery = delivery
        self._sources = sources
        self._runtime = runtime
        self._topics = topics
        self._health_interval = health_interval
        self._intake = intake
        self._notifier = notifier
        self._extras = extras
        self._watcher = watcher
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._latencies: deque[float] = deque(maxlen=500)
        self.processed = 0
        self.failed = 0

    def stop(self, *_: object) -> None:
        """Ask the loop to finish the current frame and shut down (signal-handler safe)."""
        self._stop.set()

    def run(self) -> int:
        """Start everything, work until stopped, shut down cleanly; returns the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        self._link.start()
        self._delivery.start()
        try:
            for extra in self._extras:
                extra.start()
            for source in self._sources:
                source.start()
        except BaseException:
            self._shutdown()  # claimed files go back before the error is reported
            raise
        self._notifier.ready(self.summary())
        log.info("ready: %s", self.summary())
        next_health = time.monotonic()
        while not self._stop.is_set():
            if not self._intake.is_open():
                self._stop.wait(0.5)
            elif (job := self._queue.get(timeout=0.5)) is not None:
                self._handle(job)
            if time.monotonic() >= next_health:
                self.publish_health()
                self._notifier.status(self.summary())
                next_health = time.monotonic() + self._health_interval
            self._notifier.watchdog()  # progress: a frame done, or idle with nothing to do
        self._shutdown()
        return 0

    def summary(self) -> str:
        """One line for `systemctl status`: frames, failures, outbox depth, broker state."""
        broker = "connected" if self._link.connected else "disconnected"
        if not self._link.connected and self._link.last_error:
            broker += f" ({self._link.last_error})"
        return (f"{self.processed} frames, {self.failed} failed, outbox "
                f"{self._outbox.stats().depth}, broker {broker}")

    def _handle(self, job: Job) -> None:
        started = time.perf_counter()
        frame = job.frame
        try:
            frame = job.owner.begin(frame)
            raw = job.owner.load(frame)
            if isinstance(raw, bytes):
                frame = replace(frame, data=raw)
            if frame.attempt > MAX_ATTEMPTS:
                raise SpoolError(f"interrupted the daemon {frame.attempt - 1} times; not retried")
            image = self._engine.decode(raw)
            if frame.placement is not None:  # a camera region: boxes go to full-frame pixels
                image = frame.placement.place(image)
            result = self._engine(image)
        except EdgeError as exc:
            self._reject(job, frame, exc)
        except Exception as exc:  # a bug on one frame must not stop the daemon
            log.exception("unexpected failure on %s", frame.source)
            self._reject(job, frame, InternalError(f"{type(exc).__name__}: {exc}"))
        else:
            if self._deliver(job, frame, result, time.perf_counter() - started):
                self._watch(self._watcher.result, frame, image, result)
        finally:
            image = None  # its pixels go before after_frame() hands the freed heap back
            self._runtime.clean()
            self._engine.after_frame()

    def _deliver(self, job: Job, frame, result, seconds: float) -> bool:
        try:
            job.owner.deliver(frame, result)
        except OutboxError as exc:  # the disk is full: the file goes back, to be read again later
            self._put_back(job, frame, exc)
            return False
        except Exception:  # e.g. a reply the broker cannot take: the result itself was fine
            log.exception("delivering the result of %r failed", frame.source.item)
            self.failed += 1
            return False
        self.processed += 1
        self._latencies.append(seconds * 1000.0)
        log.info("%s %r: %d lines in %.0f ms", frame.source.kind, frame.source.item,
                 len(result.lines), seconds * 1000.0, extra=_fields(frame))
        return True

    def _reject(self, job: Job, frame, error: EdgeError) -> None:
        try:
            job.owner.reject(frame, error)
        except Exception as exc:  # noqa: BLE001  reporting must not take the daemon down
            self._put_back(job, frame, exc)
            return
        self.failed += 1
        log.warning("%s %r refused: %s (%s)", frame.source.kind, frame.source.item,
                    error.message, error.code, extra=_fields(frame, error))
        self._watch(self._watcher.error, frame, error)

    @staticmethod
    def _watch(tell, *outcome) -> None:
        try:
            tell(*outcome)
        except Exception:  # noqa: BLE001  a watcher must never cost the daemon a frame
            log.exception("a watcher failed on a frame's outcome")

    def _put_back(self, job: Job, frame, exc: BaseException) -> None:
        """The frame's outcome could not be recorded: it goes back to its source unchanged, and
        intake pauses until there is room again."""
        log.debug("cannot record the outcome of %r: %s", frame.source.item, exc)
        self._intake.pause(exc)
        abandon = getattr(job.owner, "abandon", None)
        if abandon is None:
            return
        try:
            abandon(frame)
        except OSError as back:  # still claimed: the next start takes it again
            log.error("cannot put %r back: %s", frame.source.item, back)

    def publish_health(self) -> None:
        """Publish the retained health message (if connected)."""
        if not self._link.connected:
            return
        try:
            self._link.publish(self._topics.health,
                               payload.health_body(self._topics.device, self.snapshot()),
                               retain=True)
        except EdgeError as exc:
            log.warning("cannot publish health: %s", exc.message)

    def snapshot(self) -> dict[str, Any]:
        """Counters, queue and outbox depth, memory, latency, link and sources."""
        outbox = self._outbox.stats()
        return {
            "uptime_s": round(time.monotonic() - self._started, 1),
            "processed": self.processed, "failed": self.failed,
            "queue": {"depth": len(self._queue), "dropped": self._queue.dropped},
            "outbox": {**asdict(outbox), "inflight": self._delivery.inflight},
            "memory": asdict(self._engine.memory()),
            "latency_ms": _percentiles(self._latencies),
            "mqtt": {"connected": self._link.connected, "reconnects": self._link.reconnects,
                     "last_error": self._link.last_error},
            "intake": self._intake.state(),
            "models": _models(self._engine),
            "sources": {source.name: _source_state(source) for source in self._sources},
        }

    def _shutdown(self) -> None:
        log.info("stopping: finishing up")
        self._notifier.stopping()
        for source in self._sources:
            source.stop()
        self._abandon_queued()
        if not self._delivery.flush(FLUSH_SECONDS):
            log.warning("%d messages stay in the outbox for the next start",
                        self._outbox.stats().depth)
        self._delivery.stop()
        self._link.stop()
        for extra in self._extras:
            extra.stop()
        self._outbox.close()
        self._runtime.clean()
        log.info("stopped")

    def _abandon_queued(self) -> None:
        """Queued but unread spool files go back to their folder, untouched."""
        while (job := self._queue.get(timeout=0)) is not None:
            abandon = getattr(job.owner, "abandon", None)
            if abandon is not None:
                abandon(job.frame)


def _fields(frame, error: Optional[EdgeError] = None) -> dict[str, str]:
    """Structured fields for the journal: which frame, from where, and what went wrong."""
    fields = {"FRAME_ID": payload.printable(frame.key),
              "SOURCE": f"{frame.source.kind}:{payload.printable(frame.source.name)}"}
    if error is not None:
        fields["ERROR_CODE"] = error.code
    return fields


def _percentiles(values: deque[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95)}


def _models(engine: DaemonEngine) -> dict[str, str]:
    variant = engine.models.variant
    return {"pack": variant.pack, "variant": variant.precision, "device": engine.models.device}


def _source_state(source: Source) -> dict[str, Any]:
    state = getattr(source, "state", None)
    if state is not None:
        return {"type": "camera", **asdict(state())}
    return {"type": "folder", "taken": getattr(source, "taken", 0)}
