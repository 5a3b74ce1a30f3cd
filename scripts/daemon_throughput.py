#!/usr/bin/env python3
"""Images per second through the daemon, end to end, beside `edge-ocr ocr` on the same folder.

Starts a Mosquitto on a free loopback port, `edge-ocr run` on a fresh spool folder and a
subscriber; renames every image of FOLDER into the spool at once and times from the first
rename to the last result received (models are loaded before the clock starts). Then times
`edge-ocr ocr FOLDER --format jsonl`, less a run of it on the first image alone, so neither
figure counts start-up. Usage: daemon_throughput.py FOLDER [ROUNDS]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

EDGE = [sys.executable, "-m", "edge"]
SUFFIXES = {".jpg", ".jpeg", ".png"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def daemon_round(images: list[Path], work: Path) -> float:
    """Seconds from dropping every image to the last result at the subscriber."""
    port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                               str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    spool, staging = work / "spool", work / "staging"
    spool.mkdir()
    staging.mkdir()
    (work / "edge.yaml").write_text(json.dumps({
        "device_id": "bench", "mqtt": {"port": port, "host": "127.0.0.1"},
        "sources": {"folders": [{"path": str(spool), "settle_seconds": 0.2}]},
        "paths": {"state_dir": str(work / "state"), "runtime_dir": str(work / "run")}}))
    received: list[float] = []
    online = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: c.subscribe("edge-ocr/bench/#", qos=1)
    client.on_message = lambda c, u, m: (received.append(time.perf_counter())
                                         if m.topic.endswith(("/results", "/errors"))
                                         else online.set() if b'"online"' in m.payload else None)
    time.sleep(0.3)
    client.connect("127.0.0.1", port)
    client.loop_start()
    daemon = subprocess.Popen([*EDGE, "run", "--config", str(work / "edge.yaml")],
                              stderr=subprocess.DEVNULL)
    try:
        wait(online.is_set, 120)
        for image in images:
            shutil.copy(image, staging / image.name)
        started = time.perf_counter()
        for image in images:
            os.rename(staging / image.name, spool / image.name)
        wait(lambda: len(received) >= len(images), 1800)
        return received[-1] - started
    finally:
        daemon.terminate()
        daemon.wait()
        client.loop_stop()
        broker.terminate()


def cli_round(folder: Path, images: list[Path]) -> float:
    """Seconds `edge-ocr ocr` spends on the folder, less its start-up on one image."""
    def timed(*paths) -> float:
        started = time.perf_counter()
        subprocess.run([*EDGE, "ocr", *map(str, paths), "--format", "jsonl"], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - started
    return timed(folder) - timed(images[0])


def main() -> None:
    folder = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    daemon_s, cli_s = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as work:
            daemon_s.append(daemon_round(images, Path(work)))
        cli_s.append(cli_round(folder, images))
    n = len(images)
    d, c = statistics.median(daemon_s), statistics.median(cli_s)
    print(f"{folder.name}: {n} images, {rounds} round(s) | daemon end to end {n / d:.2f} img/s "
          f"({d:.1f} s) | edge-ocr ocr {n / c:.2f} img/s ({c:.1f} s) | ratio {c / d:.2f}")


if __name__ == "__main__":
    main()
