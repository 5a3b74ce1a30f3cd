"""The durable queue between the worker and the broker: SQLite, WAL, synchronous=FULL.

A message is written here before its spool file is released, and deleted only when the broker
acknowledged it with a success code; paho itself keeps un-acknowledged messages in memory only.
The queue is bounded: past `max_bytes` the oldest messages are dropped, and messages older than
`max_age_s` too. Every drop is logged and counted (`dropped`, kept in the file), never silent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import OutboxError

log = logging.getLogger(__name__)

Encoder = Callable[[dict, int], bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxLimits:
    """When the oldest messages are dropped."""

    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class QueuedMessage:
    """One message waiting for its PUBACK."""

    seq: int
    id: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    """Depth, size and drop counters, for health."""

    depth: int
    bytes: int
    dropped: int
    rejected: int
    oldest_age_s: float


class Outbox:
    """Append in order, read in order, delete on acknowledgement. Safe across threads."""

    def __init__(self, path: Path, encode: Encoder, limits: OutboxLimits = OutboxLimits(),
                 clock: Callable[[], float] = time.time) -> None:
        self._encode = encode
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the outbox {path}: {exc}",
                              "check the state directory's permissions and free space") from exc

    def put(self, topic: str, message_id: str, body: dict) -> int:
        """Store one message durably; returns its sequence number (encoded into the payload)."""
        with self._lock, self._write():
            cursor = self._db.execute(
                "INSERT INTO messages (id, topic, payload, created) VALUES (?, ?, ?, ?)",
                (message_id, topic, b"", self._clock()))
            seq = int(cursor.lastrowid)
            self._db.execute("UPDATE messages SET payload = ? WHERE seq = ?",
                             (self._encode(body, seq), seq))
            self._enforce_limits()
        return seq

    def pending(self, after_seq: int, limit: int) -> list[QueuedMessage]:
        """Up to `limit` messages with a sequence number above `after_seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, topic, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()
        return [QueuedMessage(seq, mid, topic, bytes(payload)) for seq, mid, topic, payload in rows]

    def acknowledge(self, seq: int) -> None:
        """The broker accepted it: forget it."""
        with self._lock, self._write():
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def reject(self, seq: int, reason: str) -> None:
        """The broker refused it for good (an ACL, a quota): drop it, log it, count it."""
        log.error("broker refused message %d (%s); it is dropped", seq, reason)
        with self._lock, self._write():
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            self._count("rejected", 1)

    def stats(self) -> OutboxStats:
        """Depth, bytes, drops and the age of the oldest message."""
        with self._lock:
            depth, size, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created) FROM messages"
            ).fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        age = self._clock() - oldest if oldest is not None else 0.0
        return OutboxStats(depth, size, counters.get("dropped", 0), counters.get("rejected", 0),
                           round(age, 1))

    def close(self) -> None:
        """Close the database (a clean WAL checkpoint)."""
        with self._lock:
            self._db.close()

    def _enforce_limits(self) -> None:
        cutoff = self._clock() - self._limits.max_age_s
        dropped = self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,)).rowcount
        (size,) = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
                                   ).fetchone()
        while size > self._limits.max_bytes:
            seq, length = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM messages ORDER BY seq LIMIT 1").fetchone()
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            size -= length
            dropped += 1
        if dropped:
            log.warning("outbox over its limits: dropped the %d oldest messages", dropped)
            self._count("dropped", dropped)

    def _count(self, name: str, amount: int) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) "
                         "DO UPDATE SET value = value + excluded.value", (name, amount))

    def _write(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; sqlite errors become OutboxError."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox write failed: {exc}", "check free disk space") from exc

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return False
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"outbox write failed: {exc}", "check free disk space") from exc
        self._rollback()
        if isinstance(value, sqlite3.Error):
            raise OutboxError(f"outbox write failed: {value}", "check free disk space") from value
        return False

    def _rollback(self) -> None:
        """Roll back what SQLite has not rolled back itself (it does on a full disk)."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
