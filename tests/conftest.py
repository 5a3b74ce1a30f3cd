"""Shared fixtures: the real model store, rendered pages with known text, a CLI runner."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import cv2
import pytest

from daemon_kit import Broker, Daemon
from edge.config import OcrConfig, default_model_dir
from edge.frames import DecodedImage
from edge.models.calibration import render_page
from edge.models.factory import build_pipeline
from edge.models.store import ModelStore

PACKS = ("ppocr-v6-small", "ppocr-v6-tiny")


@pytest.fixture(scope="session")
def store() -> ModelStore:
    """The model directory the install step filled; tests never download."""
    store = ModelStore(default_model_dir())
    missing = [f"{p}/{v}" for p in PACKS for v in ("fp32", "int8")
               if v not in store.variants(p)]
    if missing:
        pytest.fail(f"model variants missing in {store.root}: {', '.join(missing)}; "
                    "run scripts/setup.sh (edge-ocr models pull all && edge-ocr models quantize all)")
    return store


@pytest.fixture(scope="session")
def small_int8(store):
    """The default engine: small pack, int8 variant, CPU."""
    return build_pipeline(OcrConfig(precision="int8"), store).pipeline


@pytest.fixture(scope="session")
def tiny_int8(store):
    return build_pipeline(OcrConfig(pack="ppocr-v6-tiny", precision="int8"), store).pipeline


def png_header(width: int, height: int) -> bytes:
    """The signature and header chunk of a PNG that claims `width` x `height` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF block whose orientation tag is `orientation` (6: turn 90° clockwise
    to display), as phone cameras write it."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count 1, value
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]


def decoded(image) -> DecodedImage:
    """A BGR array as the engine's input, at full scale."""
    return DecodedImage(image, image.shape[1], image.shape[0])


@pytest.fixture
def page_files(tmp_path):
    """Three rendered pages written as JPEG and PNG files; returns (folder, pages by name)."""
    folder = tmp_path / "pages"
    folder.mkdir()
    pages = {}
    for seed, suffix in ((7, ".jpg"), (8, ".png"), (9, ".jpg")):
        page = render_page(seed, lines=6)
        name = f"page{seed}{suffix}"
        cv2.imwrite(str(folder / name), page.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        pages[name] = page
    return folder, pages


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `edge-ocr` in a child process, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, env=full_env, timeout=300)


@pytest.fixture
def run_daemon(tmp_path):
    """Starts `edge-ocr run` children, each in a folder of its own (daemon0, daemon1, ...);
    whatever still runs at the end is killed."""
    started: list[Daemon] = []

    def start(port: int, **settings) -> Daemon:
        daemon = Daemon(tmp_path / f"daemon{len(started)}", port, settings).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.alive():
            daemon.kill()


@pytest.fixture
def broker(tmp_path):
    """A Mosquitto of the test's own on a free loopback port."""
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()
