"""Real parts for daemon tests: a Mosquitto on a free loopback port, a subscriber, the daemon.

Mosquitto 2.x ignores `-p` once a conf has a `listener` and refuses anonymous clients by
default, so each broker gets its own conf. The daemon runs as a child process (`edge-ocr run`)
so tests can signal it, kill it and read its peak RSS from /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as paho
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.daemon.budget import MEASURE_TIMEOUT_S

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """True when something accepts connections on this loopback port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Broker:
    """One Mosquitto process with its own conf, persistence and port; restartable."""

    def __init__(self, folder: Path, extra_conf: str = "") -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {folder}/\nautosave_interval 1\n"
            f"log_dest file {folder}/mosquitto.log\n{extra_conf}")
        self._process: Optional[subprocess.Popen] = None

    def start(self) -> "Broker":
        self._process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def _listening(self) -> bool:
        return listening(self.port)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: Optional[bytes] = None

    def json(self) -> dict:
        return json.loads(self.payload)


class Subscriber:
    """A paho v5 client that records every message on `topic_filter`."""

    def __init__(self, port: int, topic_filter: str = "edge-ocr/#", client_id: str = "",
                 persistent: bool = False) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._filter = topic_filter
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=paho.MQTTv5)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(self._filter, qos=1)
        self._client.on_message = self._record
        self._client.reconnect_delay_set(1, 2)
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        clean = not persistent
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", port, clean_start=clean, properties=props)
        self._client.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def _record(self, client, userdata, message) -> None:
        props = getattr(message, "properties", None)
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), message.retain,
                                          getattr(props, "CorrelationData", None)))

    def on(self, leaf: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + leaf)]

    def results_by_item(self) -> dict[str, dict]:
        """First result per source item (re-sends ignored)."""
        found: dict[str, dict] = {}
        for message in self.on("results"):
            body = message.json()
            found.setdefault(body["source"]["item"], body)
        return found

    def publish(self, topic: str, payload: bytes, response_topic: Optional[str] = None,
                correlation: Optional[bytes] = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation:
            props.CorrelationData = correlation
        self._client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Daemon:
    """`edge-ocr run` in a child process, with its own spool, state and runtime folders."""

    root: Path
    port: int
    settings: dict = field(default_factory=dict)
    process: Optional[subprocess.Popen] = None

    def __post_init__(self) -> None:
        self.spool = self.root / "spool"
        self.state = self.root / "state"
        self.runtime = self.root / "run"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "daemon.log"
        config = {
            "device_id": "test-box",
            "sources": {"folders": [{"path": str(self.spool), "settle_seconds": 0.5}]},
            "mqtt": {"host": "127.0.0.1", "port": self.port},
            "spool": {"reconcile_seconds": 2},
            "health": {"interval_seconds": 2},
            "paths": {"state_dir": str(self.state), "runtime_dir": str(self.runtime)},
        }
        for section, values in self.settings.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section] = {**config[section], **values}
            else:
                config[section] = values
        self.config = self.root / "edge-ocr.yaml"
        self.config.write_text(yaml.safe_dump(config))

    def start(self) -> "Daemon":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        return self

    def wait_ready(self, subscriber: Subscriber, timeout: float = 60) -> None:
        """Wait for the daemon's "online"; one with a memory budget is first allowed the time
        it may take to measure its pack."""
        if self.settings.get("resources", {}).get("memory_mb", "auto") not in ("auto", 0):
            timeout += MEASURE_TIMEOUT_S

        def online() -> bool:
            if not self.alive():
                raise AssertionError("the daemon exited before it came online")
            return any(m.json()["state"] == "online" for m in subscriber.on("status"))

        try:
            wait_for(online, timeout, "the daemon to come online")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{self.log_text()[-3000:]}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(l for l in status.splitlines() if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def spool_files(self) -> list[str]:
        """Files left in the spool and its work folder (sub-folders are not the daemon's)."""
        left = [n for n in os.listdir(self.spool) if not (self.spool / n).is_dir()]
        work = self.spool / ".edge-ocr"
        return left + (os.listdir(work) if work.exists() else [])

    def drop(self, name: str, data: bytes) -> None:
        """Write a file the way a careful producer does: elsewhere, then rename in."""
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        temp = staging / name
        temp.write_bytes(data)
        os.rename(temp, self.spool / name)
