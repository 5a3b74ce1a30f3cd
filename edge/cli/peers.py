"""The systems `edge-ocr bench --against` compares with, and their cached installs.

A peer is installed on first use into a virtual environment of its own under the cache folder
(`$XDG_CACHE_HOME/edge-ocr/peers`, else `~/.cache/edge-ocr/peers`), with the same onnxruntime
version as edge-ocr, so both run on the same runtime. This is an install step: it downloads
from the package index once; later runs reuse the environment and download nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge.errors import PeerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerSpec:
    """A peer: its name in the table, what pip installs, and the runner script it runs."""

    key: str
    name: str
    requirements: tuple[str, ...]
    runner: str


PEERS = {
    "rapidocr": PeerSpec("rapidocr", "RapidOCR 3.10.0", ("rapidocr==3.10.0",), "peer_rapidocr.py"),
}


def cache_dir() -> Path:
    """Where peers are installed."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edge-ocr" / "peers"


def peer_command(spec: PeerSpec, threads: int) -> list[str]:
    """The command that runs the peer over image files (appended), installing it if need be."""
    venv = install(spec)
    return [str(venv / "bin" / "python"), str(Path(__file__).with_name(spec.runner)),
            "--threads", str(threads)]


def install(spec: PeerSpec) -> Path:
    """The peer's virtual environment, created and filled on first use."""
    runtime = metadata.version("onnxruntime")
    venv = cache_dir() / f"{spec.key}-ort{runtime}"
    done = venv / ".edge-ocr-installed"
    if done.exists():
        return venv
    log.info("installing %s into %s (once; later runs reuse it)", spec.name, venv)
    logfile = venv.with_name(venv.name + ".install.log")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w", encoding="utf-8") as out:
        for step in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      *spec.requirements, f"onnxruntime=={runtime}"]):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise PeerError(f"installing {spec.name} failed (see {logfile})",
                                "check the connection to the package index, then run again")
    done.write_text(" ".join(spec.requirements) + f" onnxruntime=={runtime}\n", encoding="utf-8")
    return venv
