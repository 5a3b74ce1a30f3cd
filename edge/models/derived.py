"""Models derived beside a pulled or built model file, made again whenever the source is newer.

The derivation runs in a child process (`python -m <module> ARGS`), so the `onnx` package and
the model's protobuf never enter the process that serves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

from edge.errors import ModelError


def derive_in_child(source: Path, outputs: Sequence[Path], module: str, args: Sequence[str],
                    purpose: str) -> None:
    """Run `module` with `args` in a child process unless every one of `outputs` is at least as
    new as `source`; its failure is a ModelError that names `purpose`."""
    if all(_newer_than(path, source) for path in outputs):
        return
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"cannot prepare {source} for {purpose}: {done.stderr.strip()[-300:]}",
                         "check that the model directory is writable")


def _newer_than(derived: Path, source: Path) -> bool:
    try:
        return derived.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except FileNotFoundError:
        return False
