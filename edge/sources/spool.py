"""One spool folder's files: claimed atomically, read safely, then released or filed as failed.

A file is claimed by renaming it into the hidden work folder `.edge-ocr/` of the same spool (one
atomic rename on one file system), with a token and the attempt number in its new name. A crash
leaves it there; the next start takes it again with the attempt count raised. Reading opens it
relative to the work folder with O_NOFOLLOW|O_NONBLOCK and checks the open file: symlinks, FIFOs,
devices, hard-linked and oversize files are refused without blocking and without following.
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
    """A file in the work folder: its name there, its original name, and the attempt."""

    key: str
    original: str
    attempt: int


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
        claim = Claim(f"{time.time_ns():x}.1-{name}", name, 1)
        try:
            os.rename(self.folder / name, self._work / claim.key)
        except FileNotFoundError:
            return None
        return claim

    def recover(self) -> list[Claim]:
        """Files claimed before a crash, renamed with their attempt count raised, oldest first."""
        claims = []
        for key in sorted(os.listdir(self._work)):
            parsed = _parse_key(key)
            if parsed is None:
                continue
            token, attempt, original = parsed
            claim = Claim(f"{token}.{attempt + 1}-{original}", original, attempt + 1)
            os.rename(self._work / key, self._work / claim.key)
            claims.append(claim)
        return claims

    def unrecover(self, claim: Claim) -> None:
        """Undo `recover` for a claim that was never read: its attempt count goes back."""
        token = claim.key.partition(".")[0]
        os.rename(self._work / claim.key,
                  self._work / f"{token}.{claim.attempt - 1}-{claim.original}")

    def unclaim(self, claim: Claim) -> None:
        """Put a claimed file back where it was found (shutting down before it was read)."""
        target = self.folder / claim.original
        if not target.exists():
            os.rename(self._work / claim.key, target)

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
                return
            _move(source, _free_name(self._settings.done_dir, claim.original))
            self._prune_done()
        except OSError as exc:  # the result is queued already: report, never fail the frame
            log.error("%s: cannot release %r: %s", self.folder, claim.original, exc)

    def fail(self, claim: Claim, error: EdgeError, digest: str) -> Path:
        """File the claimed file under failed/ with a JSON sidecar saying why."""
        target = _free_name(self._settings.failed_dir, claim.original)
        _move(self._work / claim.key, target)
        sidecar = {"code": error.code, "message": error.message, "attempts": claim.attempt,
                   "sha256": digest, "folder": str(self.folder),
                   "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        sidecar_path = target.with_name(target.name + SIDECAR_SUFFIX)
        sidecar_path.write_text(json.dumps(sidecar, ensure_ascii=True, indent=1), "utf-8")
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
                _move(failed, _free_name(self.folder, failed.name))
                moved += 1
            sidecar.unlink(missing_ok=True)
        return moved

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


def _parse_key(key: str) -> Optional[tuple[str, int, str]]:
    token, _, rest = key.partition(".")
    attempt, _, original = rest.partition("-")
    if not token or not attempt.isdigit() or not original:
        return None
    return token, int(attempt), original


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


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    while target.exists() or target.is_symlink():
        target = folder / f"{time.time_ns():x}-{name}"
    return target


def _move(source: Path, target: Path) -> None:
    """Rename, or copy and delete across file systems; a symlink moves as a link."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(source), str(target))
