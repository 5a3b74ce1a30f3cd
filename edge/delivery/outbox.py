"""The durable queue between the worker and the broker: SQLite, WAL, synchronous=FULL.

A message is written here before its spool file is released, and deleted only when the broker
acknowledged it with a success code; paho itself keeps un-acknowledged messages in memory only.
The queue is bounded: past `max_bytes` the oldest messages are dropped, and messages older than
`max_age_s` too. Every drop is logged and counted (`dropped`, kept in the file), never silent.

A full disk must not stop delivery: deleting acknowledged rows needs a little room in the WAL.
The outbox keeps a small reserve file beside it and gives it up when a delete finds the disk
full, then checkpoints the WAL down to nothing; the reserve comes back once there is room. The
WAL is kept small as a rule (frequent checkpoints, truncated past a limit).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import DiskFullError, OutboxError

log = logging.getLogger(__name__)

Encoder = Callable[[dict, int], bytes]

RESERVE_BYTES = 256 * 1024  # given up so that acknowledged rows can be deleted on a full disk
ROOM_BYTES = 256 * 1024  # free beyond the reserve before new messages are taken again
WAL_PAGES = 128  # checkpoint after this many pages (512 KB)

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
        self._reserve = path.with_name(path.name + ".reserve")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the outbox {path}: {exc}",
                              "check the state directory's permissions and free space") from exc
        self._restore_reserve()

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
        self._delete(seq, rejected=False)

    def reject(self, seq: int, reason: str) -> None:
        """The broker refused it for good (an ACL, a quota): drop it, log it, count it."""
        log.error("broker refused message %d (%s); it is dropped", seq, reason)
        self._delete(seq, rejected=True)

    def has_room(self) -> bool:
        """Whether new messages can be stored: the WAL checkpointed, the reserve in place, and
        room beyond it on the disk."""
        with self._lock:
            self._checkpoint()
        if not self._restore_reserve():
            return False
        try:
            disk = os.statvfs(self._reserve.parent)
        except OSError:
            return False
        return disk.f_bavail * disk.f_frsize >= ROOM_BYTES

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

    def _delete(self, seq: int, rejected: bool) -> None:
        """Delete one row; on a full disk give up the reserve, checkpoint and try once more."""
        try:
            self._delete_once(seq, rejected)
        except DiskFullError:
            self._give_up_reserve()
            with self._lock:
                self._checkpoint()
            self._delete_once(seq, rejected)

    def _delete_once(self, seq: int, rejected: bool) -> None:
        with self._lock, self._write():
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            if rejected:
                self._count("rejected", 1)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (fails quietly when it cannot)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.debug("outbox checkpoint failed: %s", exc)

    def _restore_reserve(self) -> bool:
        """Put the reserve file back if it is missing; False when the disk has no room for it."""
        if self._reserve.exists():
            return True
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return True
        except OSError:
            return False
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            return True
        except OSError:
            self._reserve.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)

    def _give_up_reserve(self) -> None:
        if self._reserve.exists():
            log.warning("outbox: disk full; using its reserve to delete acknowledged messages")
        self._reserve.unlink(missing_ok=True)

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
            raise _translated(exc) from exc

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return False
            except sqlite3.Error as exc:
                self._rollback()
                raise _translated(exc) from exc
        self._rollback()
        if isinstance(value, sqlite3.Error):
            raise _translated(value) from value
        return False

    def _rollback(self) -> None:
        """Roll back what SQLite has not rolled back itself (it does on a full disk)."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _translated(exc: sqlite3.Error) -> OutboxError:
    """A full disk as `DiskFullError`, anything else as `OutboxError`."""
    full = (getattr(exc, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13)
            or "disk is full" in str(exc))
    kind = DiskFullError if full else OutboxError
    return kind(f"outbox write failed: {exc}", "free disk space in the state directory")
