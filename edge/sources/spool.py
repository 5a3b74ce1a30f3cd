"""One spool folder's files: claimed atomically, read safely, then released or filed as failed.

A file is claimed by renaming it into the hidden work folder `.edge-ocr/` of the same spool (one
atomic rename on one file system) as `<token>.<reads>-<name>`, where `reads` counts how often
reading it began. Only the worker's start on a file raises the count, so after a crash only the
file being read at the time has used up an attempt; the next start takes every claim again as it
is. A name too long to carry the prefix is shortened in the claim, and the original is kept
beside it in `<token>.name`. Reading opens the file relative to the work folder with
O_NOFOLLOW|O_NONBLOCK and checks the open file: symlinks, FIFOs, devices, hard-linked and
oversize files are refused without blocking and without following.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edge.errors import EdgeError, SpoolError

log = logging.getLogger(__name__)

WORK_DIR = ".edge-ocr"
SIDECAR_SUFFIX = ".error.json"
NAME_SUFFIX = ".name"  # the original name of a claim whose own name had to be shortened
NAME_MAX = 255  # bytes in one file name on Linux file systems
_KEY_ROOM = 24  # bytes of a claim's "<token>.<reads>-" prefix, with room for many reads


@dataclass(frozen=True)
class SpoolSettings:
    """Where finished files go and what is never taken."""

    done_dir: Optional[Path]  # None: finished files are deleted
    failed_dir: Path
    max_bytes: int
    ignore_suffixes: tuple[str, ...]
    done_max_age_s: float = 7 * 86400.0
    done_max_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Claim:
    """A file in the work folder: its name there, its original name, and how often reading it
    began."""

    key: str
    original: str
    attempt: int

    @property
    def token(self) -> str:
        """The part of the key that stays the same for the claim's whole life."""
        return self.key.partition(".")[0]


class Spool:
    """Claims, reads and releases the files of one folder."""

    def __init__(self, folder: Path, settings: SpoolSettings) -> None:
        self.folder = folder
        self._settings = settings
        self._work = folder / WORK_DIR
        self._last_prune = 0.0
        try:
            self._work.mkdir(parents=True, exist_ok=True)
            settings.failed_dir.mkdir(parents=True, exist_ok=True)
            if settings.done_dir is not None:
                settings.done_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot prepare spool folder {folder}: {exc.strerror}",
                             "create it and give the daemon's user write access") from exc

    def eligible(self, name: str) -> bool:
        """Not a dot-file and not a partial-download name."""
        return not name.startswith(".") and not name.endswith(self._settings.ignore_suffixes)

    def claim(self, name: str) -> Optional[Claim]:
        """Move `name` into the work folder; None if it is gone (someone else took it)."""
        token = f"{time.time_ns():x}"
        claim = Claim(_key(token, 0, name), name, 0)
        if _fitted(name, NAME_MAX - _KEY_ROOM) != name:
            (self._work / (token + NAME_SUFFIX)).write_bytes(os.fsencode(name))
        try:
            os.rename(self.folder / name, self._work / claim.key)
        except FileNotFoundError:
            self._forget_name(claim)
            return None
        return claim

    def begin(self, claim: Claim) -> Claim:
        """Record that reading `claim` begins: its count of reads goes up by one."""
        started = Claim(_key(claim.token, claim.attempt + 1, claim.original), claim.original,
                        claim.attempt + 1)
        try:
            os.rename(self._work / claim.key, self._work / started.key)
        except OSError as exc:
            raise SpoolError(f"cannot mark the file as being read: {_why(exc)}") from exc
        return started

    def recover(self) -> list[Claim]:
        """Files claimed before a crash or a stop, oldest first, with their counts of reads."""
        entries = sorted(os.listdir(self._work))
        claims = [claim for key in entries if (claim := self._parse(key)) is not None]
        tokens = {claim.token for claim in claims}
        for name in entries:  # a name kept for a claim that never happened
            if name.endswith(NAME_SUFFIX) and name[:-len(NAME_SUFFIX)] not in tokens:
                (self._work / name).unlink(missing_ok=True)
        return claims

    def unclaim(self, claim: Claim) -> None:
        """Put a claimed file back into the spool under its own name (or a free one)."""
        os.rename(self._work / claim.key, _free_name(self.folder, claim.original))
        self._forget_name(claim)

    def ends(self, name: str, length: int = 64) -> tuple[bytes, bytes, int]:
        """The first and last `length` bytes of a regular file still in the spool, and its size
        (to tell a finished image from one still being written); empty when unreadable."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.folder / name, flags)
        except OSError:
            return b"", b"", 0
        try:
            size = os.fstat(fd).st_size
            return os.pread(fd, length, 0), os.pread(fd, length, max(0, size - length)), size
        except OSError:
            return b"", b"", 0
        finally:
            os.close(fd)

    def read(self, claim: Claim) -> bytes:
        """The claimed file's bytes, if it is a plain, single-linked file within the size cap."""
        work_fd = os.open(self._work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            _check(os.stat(claim.key, dir_fd=work_fd, follow_symlinks=False), self._settings)
            fd = os.open(claim.key, flags, dir_fd=work_fd)
        except OSError as exc:
            raise SpoolError(f"cannot open the file: {_why(exc)}") from exc
        finally:
            os.close(work_fd)
        with os.fdopen(fd, "rb") as handle:
            _check(os.fstat(handle.fileno()), self._settings)
            try:
                return handle.read(self._settings.max_bytes + 1)
            except OSError as exc:
                raise SpoolError(f"cannot read the file: {_why(exc)}") from exc

    def release(self, claim: Claim) -> None:
        """The result is safely queued: delete the file, or move it to the done folder."""
        source = self._work / claim.key
        try:
            if self._settings.done_dir is None:
                source.unlink(missing_ok=True)
            else:
                _move(source, _free_name(self._settings.done_dir, claim.original))
                self._prune_done()
            self._forget_name(claim)
        except OSError as exc:  # the result is queued already: report, never fail the frame
            log.error("%s: cannot release %r: %s", self.folder, claim.original, exc)

    def fail(self, claim: Claim, error: EdgeError, digest: str) -> Path:
        """File the claimed file under failed/ with a JSON sidecar saying why."""
        target = _free_name(self._settings.failed_dir, claim.original, len(SIDECAR_SUFFIX))
        _move(self._work / claim.key, target)
        sidecar = {"code": error.code, "message": error.message, "attempts": claim.attempt,
                   "sha256": digest, "folder": str(self.folder), "name": claim.original,
                   "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        sidecar_path = target.with_name(target.name + SIDECAR_SUFFIX)
        sidecar_path.write_text(json.dumps(sidecar, ensure_ascii=True, indent=1), "utf-8")
        self._forget_name(claim)
        return target

    def retry_failed(self) -> int:
        """Move this folder's failed files back into it; returns how many."""
        moved = 0
        for sidecar in self._settings.failed_dir.glob("*" + SIDECAR_SUFFIX):
            try:
                info = json.loads(sidecar.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if info.get("folder") != str(self.folder):
                continue
            failed = sidecar.with_name(sidecar.name[:-len(SIDECAR_SUFFIX)])
            if failed.exists() or failed.is_symlink():
                _move(failed, _free_name(self.folder, info.get("name") or failed.name))
                moved += 1
            sidecar.unlink(missing_ok=True)
        return moved

    def _parse(self, key: str) -> Optional[Claim]:
        """The claim a work-folder entry stands for, with its original name; None for others."""
        token, _, rest = key.partition(".")
        reads, _, name = rest.partition("-")
        if not token or not reads.isdigit() or not name:
            return None
        kept = self._work / (token + NAME_SUFFIX)
        if kept.exists():
            name = os.fsdecode(kept.read_bytes())
        return Claim(key, name, int(reads))

    def _forget_name(self, claim: Claim) -> None:
        (self._work / (claim.token + NAME_SUFFIX)).unlink(missing_ok=True)

    def _prune_done(self) -> None:
        """Retention of the done folder by age and by total size (at most once a minute)."""
        now = time.time()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        entries = []
        for entry in os.scandir(self._settings.done_dir):
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(info.st_mode):
                entries.append((info.st_mtime, info.st_size, Path(entry.path)))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for mtime, size, entry in entries:
            if now - mtime <= self._settings.done_max_age_s and total <= self._settings.done_max_bytes:
                break
            entry.unlink(missing_ok=True)
            total -= size


def _key(token: str, reads: int, name: str) -> str:
    return f"{token}.{reads}-{_fitted(name, NAME_MAX - _KEY_ROOM)}"


def _fitted(name: str, limit: int) -> str:
    """`name`, or its stem cut short (the suffix kept) so that it takes at most `limit` bytes."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, dot, suffix = raw.rpartition(b".")
    suffix = b"." + suffix if dot and stem and len(suffix) <= 16 else b""
    stem = raw[:len(raw) - len(suffix)] if suffix else raw
    return os.fsdecode(stem[:limit - len(suffix)] + suffix)


def _check(info: os.stat_result, settings: SpoolSettings) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise SpoolError("a symbolic link; links are never followed out of the spool")
    if not stat.S_ISREG(info.st_mode):
        raise SpoolError("not a regular file (a FIFO, socket or device)")
    if info.st_nlink > 1:
        raise SpoolError(f"a hard link ({info.st_nlink} names); only single-linked files are read")
    if info.st_size > settings.max_bytes:
        raise SpoolError(f"{info.st_size} bytes, over the {settings.max_bytes}-byte limit")


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link"
    return exc.strerror or str(exc)


def _free_name(folder: Path, name: str, reserve: int = 0) -> Path:
    """A path in `folder` for `name` that is not taken, and short enough to leave `reserve`
    bytes for a suffix."""
    target = folder / _fitted(name, NAME_MAX - reserve)
    while target.exists() or target.is_symlink():
        target = folder / _fitted(f"{time.time_ns():x}-{name}", NAME_MAX - reserve)
    return target


def _move(source: Path, target: Path) -> None:
    """Rename, or copy and delete across file systems; a symlink moves as a link."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(source), str(target))
