"""The daemon's private temp folder: created 0700, emptied at start and after every frame.

Libraries that write temporary files are pointed at it through $TMPDIR, so after any run,
killed or clean, nothing of ours is left anywhere else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edge.errors import ConfigError


class RuntimeDir:
    """One private folder for everything temporary."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        """Create it (mode 0700), empty it, and make it $TMPDIR for this process."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create the runtime folder {self.path}: {exc.strerror}",
                              "set paths.runtime_dir to a writable folder") from exc
        self.clean()
        os.environ["TMPDIR"] = str(self.path)

    def clean(self) -> None:
        """Remove everything inside it."""
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
