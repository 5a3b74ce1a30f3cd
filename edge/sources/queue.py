"""The bounded queue in front of the single worker.

Folders wait for room (their files are safe on disk meanwhile); cameras never wait: when the
queue is full the oldest camera frame is dropped, and a camera frame that finds only files
ahead of it is dropped itself.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Optional, Protocol, Union

import numpy as np

from edge.errors import EdgeError
from edge.frames import Frame, OcrResult


class FrameOwner(Protocol):
    """What the worker needs from whoever produced a frame."""

    def begin(self, frame: Frame) -> Frame:
        """The worker starts on the frame; returns it as its owner now knows it."""

    def load(self, frame: Frame) -> Union[bytes, np.ndarray]:
        """The frame's encoded bytes or pixels (may raise an EdgeError)."""

    def deliver(self, frame: Frame, result: OcrResult) -> None:
        """Queue or send the result, then release the frame's resources."""

    def reject(self, frame: Frame, error: EdgeError) -> None:
        """Report the error, then file the frame away."""


@dataclass(frozen=True)
class Job:
    """A frame and the source that owns it."""

    frame: Frame
    owner: FrameOwner
    droppable: bool = False


class WorkQueue:
    """A bounded FIFO of jobs; droppable jobs give way, others wait."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self.dropped = 0

    def __len__(self) -> int:
        with self._ready:
            return len(self._jobs)

    def put(self, job: Job, stop: Optional[threading.Event] = None) -> bool:
        """Queue a job. Non-droppable jobs wait for room until `stop` is set (then False)."""
        with self._ready:
            while len(self._jobs) >= self._size:
                if job.droppable and not self._drop_oldest_droppable():
                    self.dropped += 1
                    return False
                if stop is not None and stop.is_set():
                    return False
                self._ready.wait(0.2)
            self._jobs.append(job)
            self._ready.notify_all()
            return True

    def offer(self, job: Job) -> bool:
        """Queue a job only if there is room right now."""
        with self._ready:
            if len(self._jobs) >= self._size:
                return False
            self._jobs.append(job)
            self._ready.notify_all()
            return True

    def get(self, timeout: float) -> Optional[Job]:
        """The oldest job, or None after `timeout` seconds."""
        with self._ready:
            if not self._jobs:
                self._ready.wait(timeout)
            if not self._jobs:
                return None
            job = self._jobs.popleft()
            self._ready.notify_all()
            return job

    def _drop_oldest_droppable(self) -> bool:
        for queued in self._jobs:
            if queued.droppable:
                self._jobs.remove(queued)
                self.dropped += 1
                return True
        return False
