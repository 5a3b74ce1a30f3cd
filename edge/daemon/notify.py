"""systemd notification (READY, WATCHDOG, STATUS, STOPPING); silent outside systemd.

The service loop calls `watchdog()` itself, once per turn (a frame finished, or it waited idle
with nothing to do), never from a timer thread: a stuck worker stops the pings and systemd
restarts it after WatchdogSec.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

log = logging.getLogger(__name__)

Send = Callable[[str], object]


def _systemd_send() -> Optional[Send]:
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    try:
        from systemd import daemon
    except ImportError:  # systemd-python missing: run without notifications, say so once
        log.warning("NOTIFY_SOCKET is set but systemd-python is not installed: no notifications")
        return None
    return daemon.notify


class Notifier:
    """Tells systemd how the daemon is doing."""

    def __init__(self, send: Optional[Send] = None) -> None:
        self._send = send if send is not None else _systemd_send()

    @property
    def active(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._send is not None

    def ready(self, status: str) -> None:
        """Start-up is complete: config valid, models warm, outbox open, sources watching."""
        self._notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        """The main loop made progress."""
        self._notify("WATCHDOG=1")

    def status(self, status: str) -> None:
        """A one-line summary for `systemctl status`."""
        self._notify(f"STATUS={status}")

    def stopping(self) -> None:
        """Shutting down cleanly."""
        self._notify("STOPPING=1\nSTATUS=stopping")

    def _notify(self, message: str) -> None:
        if self._send is not None:
            self._send(message)
