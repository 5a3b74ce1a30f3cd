"""A spool folder as a frame source: events, a start-up scan and a periodic reconcile.

inotify (through watchdog) reports files written in place (close-write) and renamed in
(moved-to); `created` fires while a file is still empty, so it only makes a file a candidate.
The kernel drops events when its queue overflows and network shares send none, so a full scan
runs at start and every `reconcile_s`, and a candidate without a close event is taken once its
size and mtime held still for `settle_s`. A close event alone is not enough for an image that is
not whole yet (a JPEG without its end marker, a PNG without IEND): a writer that appends in
pieces closes the file after each, so such a file also waits for `settle_s` of no change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from edge.delivery.sink import ResultSink
from edge.errors import EdgeError, SpoolError
from edge.frames import Frame, OcrResult, SourceRef
from edge.ocr.imageio import looks_complete
from edge.sources.queue import Job, WorkQueue
from edge.sources.spool import Claim, Spool

log = logging.getLogger(__name__)


class _StopRace(logging.Filter):
    """watchdog's inotify emitter can lose a race with its own stop: it reads after stop()
    dropped its watch group, logs an ERROR and then ends normally. Nothing is lost, so the line
    is not passed on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_StopRace())

EMPTY_FILE_WAIT_S = 30.0  # an empty file with no close event may still be being written


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    stable_since: float
    closed: bool = False


class FolderSource:
    """Finds settled files in one folder, claims them and queues them for the worker."""

    def __init__(self, spool: Spool, queue: WorkQueue, sink: ResultSink,
                 settle_s: float, reconcile_s: float) -> None:
        self._spool = spool
        self._queue = queue
        self._sink = sink
        self._settle_s = settle_s
        self._reconcile_s = reconcile_s
        self._candidates: dict[str, _Candidate] = {}
        self._recovered: list[Claim] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rescan = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name=f"folder:{spool.folder}",
                                        daemon=True)
        self.taken = 0

    @property
    def name(self) -> str:
        """The folder, as messages name it."""
        return str(self._spool.folder)

    def start(self) -> None:
        """Requeue claimed files left by a crash, scan, watch, and start the taking thread."""
        try:
            self._recovered = self._spool.recover()
        except OSError as exc:
            raise SpoolError(f"{self.name}: cannot take back claimed files: {exc}",
                             "check the folder's permissions") from exc
        self._scan()
        self._observer.schedule(_Events(self), self.name, recursive=False)
        self._observer.start()
        self._thread.start()

    def rescan(self) -> None:
        """Scan the folder now (the `rescan` command)."""
        self._rescan.set()

    def stop(self) -> None:
        """Stop watching and join both threads."""
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    # --- FrameOwner -------------------------------------------------------------------------

    def begin(self, frame: Frame) -> Frame:
        """Reading begins: the claim counts one more read (a crash from here on counts)."""
        claim = self._spool.begin(_claim_of(frame))
        return replace(frame, key=claim.key, attempt=claim.attempt)

    def load(self, frame: Frame) -> bytes:
        """The claimed file's bytes, opened safely."""
        return self._spool.read(_claim_of(frame))

    def deliver(self, frame: Frame, result: OcrResult) -> None:
        """Queue the result durably, then delete or file away the spool file."""
        self._sink.result(frame, result)
        self._spool.release(_claim_of(frame))

    def reject(self, frame: Frame, error: EdgeError) -> None:
        """Queue an error message, then move the file to failed/ with its sidecar."""
        self._sink.error(frame, error)
        digest = hashlib.sha256(frame.data).hexdigest() if frame.data is not None else ""
        target = self._spool.fail(_claim_of(frame), error, digest)
        log.warning("%s: %r failed (%s): moved to %s", self.name, frame.source.item, error.code,
                    target)

    def abandon(self, frame: Frame) -> None:
        """Shutting down before the frame was read: the file goes back, untouched."""
        self._spool.unclaim(_claim_of(frame))

    def retry_failed(self) -> int:
        """Failed files of this folder go back into it (the `retry-failed` command)."""
        moved = self._spool.retry_failed()
        self.rescan()
        return moved

    # --- finding files ----------------------------------------------------------------------

    def note(self, name: str, closed: bool) -> None:
        """An event named a file of this folder."""
        if not self._spool.eligible(name):
            return
        with self._lock:
            known = self._candidates.get(name)
            if known is None:
                self._candidates[name] = _Candidate(-1, -1, time.time(), closed)
            else:
                known.closed = known.closed or closed

    def _run(self) -> None:
        for claim in self._recovered:  # unread ones stay claimed, as they were, if stopped now
            if claim.attempt:
                log.warning("%s: taking %r again after it was being read when the daemon "
                            "stopped (%d time(s))", self.name, claim.original, claim.attempt)
            if not self._queue.put(self._job(claim), self._stop):
                return
        next_scan = time.monotonic() + self._reconcile_s
        while not self._stop.wait(0.1):
            if self._rescan.is_set() or time.monotonic() >= next_scan:
                self._rescan.clear()
                self._scan()
                next_scan = time.monotonic() + self._reconcile_s
            try:
                self._take_ready()
            except Exception:  # one odd file must not stop the folder for good
                log.exception("%s: taking files failed; trying again", self.name)
                self._stop.wait(1.0)

    def _take_ready(self) -> None:
        for name in self._ready_names():
            if self._stop.is_set() or not self._take(name):
                return

    def _scan(self) -> None:
        try:
            names = os.listdir(self._spool.folder)
        except OSError as exc:
            log.error("%s: cannot list the folder: %s", self.name, exc.strerror)
            return
        for name in names:
            self.note(name, closed=False)

    def _ready_names(self) -> list[str]:
        """Candidates that are ready, oldest first; vanished ones are forgotten."""
        now, ready = time.time(), []
        with self._lock:
            for name, candidate in list(self._candidates.items()):
                info = self._lstat(name)
                if info is None or stat.S_ISDIR(info.st_mode):  # gone, or a sub-folder
                    del self._candidates[name]
                elif self._is_ready(name, candidate, info, now):
                    ready.append((info.st_mtime_ns, name))
        return [name for _, name in sorted(ready)]

    def _is_ready(self, name: str, candidate: _Candidate, info: os.stat_result,
                  now: float) -> bool:
        if not stat.S_ISREG(info.st_mode):
            return True  # links, FIFOs, devices: refused at once, never waited on
        if (info.st_size, info.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
            first_sight = candidate.size < 0
            candidate.size, candidate.mtime_ns = info.st_size, info.st_mtime_ns
            candidate.stable_since = min(now, info.st_mtime_ns / 1e9) if first_sight else now
        held = now - candidate.stable_since
        if info.st_size == 0:
            return candidate.closed or held >= max(EMPTY_FILE_WAIT_S, self._settle_s)
        if held >= self._settle_s:
            return True
        return candidate.closed and looks_complete(*self._spool.ends(name))

    def _take(self, name: str) -> bool:
        """Claim one file and queue it; False when shutting down."""
        with self._lock:
            self._candidates.pop(name, None)
        try:
            claim = self._spool.claim(name)
        except OSError as exc:
            log.error("%s: cannot claim %r: %s", self.name, name, exc.strerror or exc)
            return True
        if claim is None:
            return True
        if not self._queue.put(self._job(claim), self._stop):
            self._spool.unclaim(claim)
            return False
        self.taken += 1
        return True

    def _job(self, claim: Claim) -> Job:
        frame = Frame(SourceRef("folder", self.name, claim.original), claim.key, time.time(),
                      attempt=claim.attempt)
        return Job(frame, self)

    def _lstat(self, name: str) -> Optional[os.stat_result]:
        try:
            return os.lstat(self._spool.folder / name)
        except OSError:
            return None


def _claim_of(frame: Frame) -> Claim:
    return Claim(frame.key, frame.source.item, frame.attempt)


class _Events(FileSystemEventHandler):
    """Turns watchdog events into candidates of one folder."""

    def __init__(self, source: FolderSource) -> None:
        self._source = source
        self._folder = os.path.abspath(source.name)

    def on_created(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, closed=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, closed=False)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._note(event.src_path, closed=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._note(event.dest_path, closed=True)

    def _note(self, path: object, closed: bool) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        folder, name = os.path.split(os.path.abspath(str(path)))
        if folder == self._folder and not (os.path.isdir(path) and not os.path.islink(path)):
            self._source.note(name, closed)
