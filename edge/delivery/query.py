"""Asks a running daemon how it is, over MQTT: what `edge-ocr status` shows.

A short-lived paho client connects with the daemon's own broker settings, reads the retained
`status` and `health` messages, and sends the `status` command (the same command any MQTT client
can send), waiting a few seconds for the live answer. Under MQTT 5 the reply comes on a response
topic of its own; under 3.1.1 on the daemon's `replies` topic.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig, read_secret
from edge.delivery.mqtt import set_tls
from edge.delivery.payload import Topics
from edge.errors import BrokerUnreachableError


@dataclass(frozen=True)
class StatusAnswer:
    """What the broker holds of a daemon, and its live answer if it gave one."""

    status: Optional[dict[str, Any]]  # retained: online, offline (its last will) or stopped
    health: Optional[dict[str, Any]]  # retained: the last health message
    live: Optional[dict[str, Any]]  # the `status` command's answer; None when none came


class _Collector:
    """Keeps the first message of each topic asked for."""

    def __init__(self, topics: set[str]) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self._topics = topics
        self._lock = threading.Lock()

    def record(self, client, userdata, message) -> None:
        if message.topic not in self._topics or not message.payload:
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("command", "status") != "status":
            return  # another command's reply on the shared `replies` topic (MQTT 3.1.1)
        with self._lock:
            self.messages.setdefault(message.topic, body)

    def get(self, topic: str) -> Optional[dict[str, Any]]:
        with self._lock:
            return self.messages.get(topic)


def ask_status(config: MqttConfig, topics: Topics, timeout: float) -> StatusAnswer:
    """Connect, read the retained messages, ask `cmd/status`, wait up to `timeout` seconds."""
    v5 = config.protocol == "5"
    reply_topic = topics.replies + (f"/status-{os.getpid()}-{time.monotonic_ns()}" if v5 else "")
    collector = _Collector({topics.status, topics.health, reply_topic})
    client = _client(config, topics, collector)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(
        [(topics.status, 1), (topics.health, 1), (reply_topic, 1)]) if not rc.is_failure else None
    _connect(client, config)
    try:
        if not subscribed.wait(timeout):
            raise BrokerUnreachableError(f"the broker at {config.host}:{config.port} did not "
                                         f"answer within {timeout:.0f} s")
        client.publish(topics.leaf("cmd/status"), b"", qos=1, properties=_asking(v5, reply_topic))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and collector.get(reply_topic) is None:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    reply = collector.get(reply_topic)
    live = reply.get("result") if reply and reply.get("ok") else None
    return StatusAnswer(collector.get(topics.status), collector.get(topics.health), live)


def _client(config: MqttConfig, topics: Topics, collector: _Collector) -> paho.Client:
    protocol = paho.MQTTv5 if config.protocol == "5" else paho.MQTTv311
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol,
                         client_id=f"edge-ocr-status-{topics.device}-{os.getpid()}")
    if config.username is not None:
        password = read_secret(config.password_file) if config.password_file else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        set_tls(client, config)
    client.on_message = collector.record
    return client


def _connect(client: paho.Client, config: MqttConfig) -> None:
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive_seconds)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BrokerUnreachableError(f"cannot reach the broker at {config.host}:{config.port}: "
                                     f"{reason}", "is the broker running? check mqtt.host and "
                                                  "mqtt.port") from exc
    client.loop_start()


def _asking(v5: bool, reply_topic: str) -> Optional[Properties]:
    if not v5:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = reply_topic
    properties.CorrelationData = b"edge-ocr status"
    return properties
