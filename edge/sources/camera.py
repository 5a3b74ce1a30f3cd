"""A camera or stream as a frame source (OpenCV `VideoCapture`).

One thread per camera reads a frame every `interval_seconds`, cuts out its region of interest
(when one is set), skips frames whose region barely changed since the last one read, and offers
the rest to the worker without waiting (the queue drops the oldest camera frame when full). A
result is published when its text changed or the heartbeat interval passed. Opening and reading
have timeouts; a failure releases the device and reconnects with a doubling back-off, so a dead
camera shows in health and never hangs the daemon.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from edge.config import CameraSource as CameraConfig
from edge.delivery.sink import ResultSink
from edge.errors import CameraError, EdgeError
from edge.frames import Frame, OcrResult, SourceRef
from edge.sources.queue import Job, WorkQueue
from edge.sources.region import Cut, RegionCutter, whole_frame

log = logging.getLogger(__name__)

Opener = Callable[[CameraConfig], "cv2.VideoCapture"]
_THUMB = (64, 36)
_OPEN_LOCK = threading.Lock()
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


@dataclass(frozen=True)
class CameraState:
    """What health reports of one camera."""

    state: str  # connecting | streaming | reconnecting | ended
    frames_read: int
    frames_skipped: int
    published: int
    last_frame_at: Optional[float]
    last_error: Optional[str]


def open_capture(config: CameraConfig) -> "cv2.VideoCapture":
    """Open the camera with OpenCV's open and read timeouts; raise CameraError if it fails."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.open_timeout_seconds * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(config.read_timeout_seconds * 1000)]
    try:
        with _OPEN_LOCK:  # FFmpeg reads its options from the environment, process-wide
            if str(config.url).startswith("rtsp://"):
                os.environ[_FFMPEG_OPTIONS] = f"rtsp_transport;{config.rtsp_transport}"
            capture = cv2.VideoCapture(config.url, cv2.CAP_ANY, params)
    except cv2.error as exc:
        raise CameraError(f"camera {config.name}: OpenCV refused {config.url!r}: {exc.err}") from exc
    if not capture.isOpened():
        capture.release()
        raise CameraError(f"camera {config.name}: cannot open {config.url!r}")
    return capture


class CameraSource:
    """Reads one camera in its own thread and decides which results are worth publishing."""

    def __init__(self, config: CameraConfig, queue: WorkQueue, sink: ResultSink,
                 opener: Opener = open_capture) -> None:
        self._config = config
        self._queue = queue
        self._sink = sink
        self._opener = opener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera:{config.name}",
                                        daemon=True)
        self._lock = threading.Lock()
        self._state = CameraState("connecting", 0, 0, 0, None, None)
        self._cut = RegionCutter(config.name, config.region) if config.region else whole_frame
        self._last_thumb: Optional[np.ndarray] = None
        self._last_text: Optional[str] = None
        self._last_published = 0.0
        self._last_submitted = 0.0
        self._count = 0

    @property
    def name(self) -> str:
        """The camera's configured name."""
        return self._config.name

    def start(self) -> None:
        """Start the reading thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; a read stuck in a driver is left behind after its timeout."""
        self._stop.set()
        self._thread.join(timeout=self._config.read_timeout_seconds + 2)

    def state(self) -> CameraState:
        """A snapshot for health."""
        with self._lock:
            return self._state

    # --- FrameOwner -------------------------------------------------------------------------

    def begin(self, frame: Frame) -> Frame:
        """Nothing to record: the frame is taken as it is."""
        return frame

    def load(self, frame: Frame) -> np.ndarray:
        """The frame's pixels."""
        return frame.pixels

    def deliver(self, frame: Frame, result: OcrResult) -> None:
        """Publish when the text changed or the heartbeat is due; otherwise drop quietly."""
        due = frame.captured_at - self._last_published >= self._config.heartbeat_seconds
        if result.text == self._last_text and not due:
            return
        self._last_text, self._last_published = result.text, frame.captured_at
        self._sink.result(frame, result)
        self._update(published=self._state.published + 1)

    def reject(self, frame: Frame, error: EdgeError) -> None:
        """Publish the error."""
        self._sink.error(frame, error)

    # --- reading ----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                capture = self._opener(self._config)
            except CameraError as exc:
                self._failed(exc, "reconnecting")
            else:
                delay = 1.0
                try:
                    ended = self._read_from(capture)
                except cv2.error as exc:
                    self._failed(CameraError(f"camera {self.name}: {exc.err}"), "reconnecting")
                    ended = False
                capture.release()
                if ended and not self._config.loop:
                    self._update(state="ended")
                    return
                if ended:
                    continue
            self._stop.wait(delay)
            delay = min(delay * 2, self._config.reconnect_max_seconds)

    def _read_from(self, capture: "cv2.VideoCapture") -> bool:
        """Read until stopped or failed; True when a video file came to its end."""
        self._update(state="streaming", last_error=None)
        is_file = isinstance(self._config.url, str) and "://" not in self._config.url \
            and not self._config.url.startswith("/dev/")
        while not self._stop.is_set():
            started = time.monotonic()
            ok, pixels = capture.read()
            if not ok or pixels is None:
                if is_file:
                    return True
                self._failed(CameraError(f"camera {self.name}: read failed or timed out"),
                             "reconnecting")
                return False
            self._consider(pixels)
            self._skip_until(started + self._config.interval_seconds, capture, is_file)
        return False

    def _skip_until(self, deadline: float, capture, is_file: bool) -> None:
        """Wait out the interval; live streams keep grabbing so the next frame is fresh."""
        while not self._stop.is_set() and time.monotonic() < deadline:
            if is_file:
                self._stop.wait(deadline - time.monotonic())
            elif not capture.grab():
                return

    def _consider(self, pixels: np.ndarray) -> None:
        now = time.time()
        state = self.state()
        self._update(frames_read=state.frames_read + 1, last_frame_at=now)
        try:
            cut = self._cut(pixels)  # a copy: the capture may reuse its buffer
        except CameraError as exc:  # a region outside this frame: this camera reads nothing
            self._failed(exc, "streaming", logging.ERROR)
            return
        thumb, weights = _thumbnail(cut)
        changed = self._last_thumb is None or _change(
            thumb, self._last_thumb, weights) >= self._config.change_threshold
        heartbeat = now - self._last_submitted >= self._config.heartbeat_seconds
        if not changed and not heartbeat:
            self._update(frames_skipped=state.frames_skipped + 1)
            return
        self._last_thumb, self._last_submitted = thumb, now
        self._count += 1
        frame = Frame(SourceRef("camera", self.name, str(self._count)), f"{now:.3f}", now,
                      pixels=cut.pixels, placement=cut.placement)
        self._queue.put(Job(frame, self, droppable=True))

    def _failed(self, error: CameraError, state: str, level: int = logging.WARNING) -> None:
        if self.state().last_error != error.message:
            log.log(level, "%s", error.message)
        self._update(state=state, last_error=error.message)

    def _update(self, **changes) -> None:
        with self._lock:
            self._state = CameraState(**{**self._state.__dict__, **changes})


def _thumbnail(cut: Cut) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A small grey copy of the cut, and how much of each of its pixels lies inside the region."""
    grey = cv2.resize(cv2.cvtColor(cut.pixels, cv2.COLOR_BGR2GRAY), _THUMB,
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    if cut.inside is None:
        return grey, None
    return grey, cv2.resize(cut.inside, _THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


def _change(thumb: np.ndarray, last: np.ndarray, weights: Optional[np.ndarray]) -> float:
    """Mean grey-level change inside the region, as a fraction of full scale."""
    difference = np.abs(thumb - last)
    if weights is None:
        return float(np.mean(difference)) / 255.0
    return float(np.sum(difference * weights) / max(np.sum(weights), 1.0)) / 255.0
