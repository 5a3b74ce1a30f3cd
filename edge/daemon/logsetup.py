"""Where the daemon's log goes: the journal under systemd (with structured fields), else stderr.

Per-frame records carry `extra` fields (FRAME_ID, SOURCE, ERROR_CODE); the journal keeps them
as fields, so `journalctl -u edge-ocr ERROR_CODE=image_unreadable` finds every refused image.
"""

from __future__ import annotations

import logging
import os
import sys

from edge.config import LoggingConfig

_FORMAT = "%(levelname)s %(name)s: %(message)s"


def under_systemd() -> bool:
    """True when systemd started this process and its stderr is the journal."""
    return bool(os.environ.get("JOURNAL_STREAM") and os.environ.get("INVOCATION_ID"))


def configure_logging(config: LoggingConfig) -> None:
    """Install one handler on the root logger and the configured levels."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_journal_handler() if under_systemd() else _stderr_handler())
    root.setLevel(logging.WARNING)
    logging.getLogger("edge").setLevel(config.level.upper())
    for module, level in config.modules.items():
        logging.getLogger(module).setLevel(level.upper())


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    return handler


def _journal_handler() -> logging.Handler:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return _stderr_handler()
    handler = JournalHandler(SYSLOG_IDENTIFIER="edge-ocr")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler
