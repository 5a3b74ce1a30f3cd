"""Whether the worker takes the next frame: paused while results cannot be recorded.

When a result or an error message cannot be stored (the outbox's disk is full) or a spool file
cannot be filed away, the frame goes back where it came from and intake pauses: no file is read
again until a back-off has passed and a probe says there is room. The back-off doubles while the
probe keeps failing, so a full disk costs a check now and then, not a hot loop of reads.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from edge.errors import EdgeError

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
LONGEST_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Pause:
    """Why intake is paused, and when it next looks again."""

    reason: str
    message: str
    backoff_s: float
    until: float


class Intake:
    """Open, or paused with a growing back-off until `has_room` says otherwise."""

    def __init__(self, has_room: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._has_room = has_room
        self._clock = clock
        self._pause: Optional[Pause] = None

    def is_open(self) -> bool:
        """True when the worker may take a frame; at the end of a back-off, probe once."""
        pause = self._pause
        if pause is None:
            return True
        if self._clock() < pause.until:
            return False
        if not self._has_room():
            self._pause = self._next(pause.reason, pause.message, pause.backoff_s * 2)
            return False
        log.info("intake resumed: %s cleared", pause.reason)
        self._pause = None
        return True

    def pause(self, error: BaseException) -> None:
        """A frame's outcome could not be recorded: pause (or pause longer) and say why once."""
        reason, message = _reason(error), str(getattr(error, "message", error))
        if self._pause is None or self._pause.reason != reason:
            log.error("intake paused (%s): %s; the file goes back and is read again when there "
                      "is room", reason, message)
        backoff = FIRST_BACKOFF_S if self._pause is None else self._pause.backoff_s * 2
        self._pause = self._next(reason, message, backoff)

    def state(self) -> dict[str, object]:
        """For health: `open`, or `paused` with the reason and seconds to the next look."""
        pause = self._pause
        if pause is None:
            return {"state": "open"}
        return {"state": "paused", "reason": pause.reason, "message": pause.message,
                "retry_in_s": round(max(0.0, pause.until - self._clock()), 1)}

    def _next(self, reason: str, message: str, backoff: float) -> Pause:
        backoff = min(LONGEST_BACKOFF_S, backoff)
        return Pause(reason, message, backoff, self._clock() + backoff)


def _reason(error: BaseException) -> str:
    if isinstance(error, EdgeError):
        return error.code
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    return "cannot_record"
