"""The broker link (paho-mqtt 2.x) and the delivery of the outbox over it.

`MqttLink` owns the paho client: connection in the background with back-off, retained
availability with a last will, command subscription, and translation of paho's errors.
`Delivery` moves outbox messages to the link in sequence order, at most `inflight` at a time,
and deletes each only when its PUBACK carries a success code (MQTT v5 reports refusals there;
3.1.1 cannot). Messages handed to paho stay there across reconnects (paho resends them), so a
message is handed over once per process; a restart sends every unacknowledged one again.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig, read_secret, secret_path
from edge.delivery import payload
from edge.delivery.outbox import Outbox
from edge.delivery.payload import Topics
from edge.errors import BrokerError, CommandError, OutboxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """A command received on `cmd/<name>`, and where its reply goes."""

    name: str
    body: bytes
    response_topic: Optional[str]
    correlation: Optional[bytes]


class MqttLink:
    """One paho client: connects in the background, reconnects, announces availability."""

    def __init__(self, config: MqttConfig, topics: Topics,
                 on_command: Callable[[Command], None]) -> None:
        self._config = config
        self._topics = topics
        self._on_command = on_command
        self._connected = threading.Event()
        self._acks: "queue.SimpleQueue[tuple[int, bool, str]]" = queue.SimpleQueue()
        self.connects = 0
        self._stopping = False
        self._refused = False  # the broker's CONNACK refused us; its close is no news
        self.last_error: Optional[str] = None  # why the link is down; None once connected
        self.on_ack: Callable[[], None] = lambda: None
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._connect_hooks: list[Callable[[], None]] = []
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        """True while a session with the broker is up."""
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """Connections made after the first."""
        return max(0, self.connects - 1)

    def start(self) -> None:
        """Connect in the background; a broker that is down is retried, never fatal."""
        self._client.connect_async(self._config.host, self._config.port,
                                   self._config.keepalive_seconds)
        self._client.loop_start()

    def publish(self, topic: str, body: bytes, retain: bool = False,
                properties: Optional[Properties] = None) -> int:
        """Hand one QoS 1 message to paho; returns its MQTT message id."""
        try:
            return self._client.publish(topic, body, qos=1, retain=retain,
                                        properties=properties).mid
        except ValueError as exc:
            raise BrokerError(f"paho refused a message for {topic!r}: {exc}") from exc

    def publish_tracked(self, topic: str, body: bytes, retain: bool = False) -> Callable[[], bool]:
        """Hand one QoS 1 message to paho; returns a check: has the broker acknowledged it?"""
        try:
            return self._client.publish(topic, body, qos=1, retain=retain).is_published
        except ValueError as exc:
            raise BrokerError(f"paho refused a message for {topic!r}: {exc}") from exc

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Hand the payloads of `topic` (no wildcards) to `handler`, on paho's thread, from the
        next connection on. Call before `start`."""
        self._subscriptions[topic] = handler

    def on_connected(self, hook: Callable[[], None]) -> None:
        """Call `hook` on paho's thread after each connection is up. Call before `start`."""
        self._connect_hooks.append(hook)

    def reply(self, command: Command, body: bytes) -> None:
        """Answer a command on its v5 response topic (with its correlation data), else on
        `replies`. A response topic that is not a valid topic name gets an error reply on
        `replies` instead."""
        topic = command.response_topic or self._topics.replies
        if any(bad in topic for bad in ("\0", "+", "#")):
            log.warning("command %r asked for a reply on %r, not a valid topic name; answering "
                        "on %s", command.name, topic, self._topics.replies)
            error = CommandError(f"response topic {payload.printable(topic)!r} is not a valid "
                                 "topic name (no wildcards or NUL)")
            topic, body = self._topics.replies, payload.reply_body(command.name, False, error=error)
        properties = None
        if self._config.protocol == "5" and command.correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = command.correlation
        self.publish(topic, body, properties=properties)

    def acknowledgements(self) -> list[tuple[int, bool, str]]:
        """PUBACKs received since the last call: (message id, accepted, reason)."""
        acks = []
        while True:
            try:
                acks.append(self._acks.get_nowait())
            except queue.Empty:
                return acks

    def stop(self, timeout: float = 3.0) -> None:
        """Publish `stopped` (retained), wait briefly for it, and disconnect."""
        self._stopping = True
        if self.connected:
            info = self._client.publish(self._topics.status,
                                        payload.status_body(self._topics.device, "stopped"),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("could not publish the stopped status before exit")
        self._client.disconnect()
        self._client.loop_stop()

    def _make_client(self) -> paho.Client:
        config = self._config
        protocol = paho.MQTTv5 if config.protocol == "5" else paho.MQTTv311
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol,
                             client_id=config.client_id or f"edge-ocr-{self._topics.device}")
        client.will_set(self._topics.status, payload.status_body(self._topics.device, "offline"),
                        qos=1, retain=True)
        if config.username is not None:
            password = read_secret(config.password_file) if config.password_file else None
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            set_tls(client, config)
        client.suppress_exceptions = True  # a failing callback must not end the network thread
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(config.inflight)
        client.on_connect = self._connected_cb
        client.on_connect_fail = self._connect_failed_cb
        client.on_disconnect = self._disconnected_cb
        client.on_publish = self._published_cb
        client.on_message = self._message_cb
        return client

    def _connected_cb(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._failed(f"the broker refused the connection: {reason_code}")
            self._refused = True
            return
        self.connects += 1
        if self.last_error is None:
            log.info("connected to %s:%d", self._config.host, self._config.port)
        else:
            log.info("connected to %s:%d; the earlier failure is over (%s)", self._config.host,
                     self._config.port, self.last_error)
        self.last_error = None
        client.subscribe(self._topics.commands, qos=1)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self._topics.status, payload.status_body(self._topics.device, "online"),
                       qos=1, retain=True)
        self._connected.set()
        self.on_ack()
        for hook in self._connect_hooks:
            self._run_hook(hook)

    @staticmethod
    def _run_hook(hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:  # noqa: BLE001  on paho's thread: the connection stays up
            log.exception("a connection hook failed")

    def _connect_failed_cb(self, client, userdata) -> None:
        # paho calls this inside its `except OSError` around the connect: the error is current
        self._failed(self._failure_reason(sys.exc_info()[1]))

    def _failed(self, reason: str) -> None:
        """Keep the reason; log it once per change, not once per retry."""
        if reason != self.last_error:
            log.error("cannot connect to %s:%d: %s; retrying with back-off", self._config.host,
                      self._config.port, reason)
        self.last_error = reason

    @staticmethod
    def _failure_reason(exc: Optional[BaseException]) -> str:
        """A short reason for a connection that could not be opened."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
        if isinstance(exc, OSError):
            return exc.strerror or str(exc) or type(exc).__name__
        return "the connection could not be opened"

    def _disconnected_cb(self, client, userdata, flags, reason_code, properties) -> None:
        if self._stopping:
            log.info("disconnected (shutdown)")
        elif self._connected.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)
        elif self._refused:  # the close that follows a refusing CONNACK: already reported
            self._refused = False
        else:  # e.g. TLS 1.3: a missing client certificate is refused after the handshake
            self._failed(f"the broker closed the connection before answering ({reason_code}); "
                         "with TLS, check mqtt.tls.cert_file and key_file")
        self._connected.clear()

    def _published_cb(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put((mid, not reason_code.is_failure, str(reason_code)))
        self.on_ack()

    def _message_cb(self, client, userdata, message) -> None:
        handler = self._subscriptions.get(message.topic)
        if handler is not None:
            self._run_hook(lambda: handler(bytes(message.payload)))
            return
        name = message.topic.rsplit("/", 1)[-1]
        props = getattr(message, "properties", None)
        self._on_command(Command(name, bytes(message.payload),
                                 getattr(props, "ResponseTopic", None),
                                 getattr(props, "CorrelationData", None)))


def set_tls(client: paho.Client, config: MqttConfig) -> None:
    """Apply mqtt.tls to a paho client (relative paths from $CREDENTIALS_DIRECTORY)."""
    tls = config.tls

    def resolved(path):
        return str(secret_path(path)) if path is not None else None

    try:
        client.tls_set(ca_certs=resolved(tls.ca_file), certfile=resolved(tls.cert_file),
                       keyfile=resolved(tls.key_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"cannot use the TLS files of mqtt.tls: {exc}",
                          "check mqtt.tls paths (relative ones are read from "
                          "$CREDENTIALS_DIRECTORY)") from exc


class Delivery:
    """Moves outbox messages to the broker in order and deletes them on a successful PUBACK."""

    def __init__(self, outbox: Outbox, link: MqttLink, window: int) -> None:
        self._outbox = outbox
        self._link = link
        self._window = window
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox seq
        self._settled: dict[int, tuple[bool, str]] = {}  # acknowledged, not yet deleted
        self._delete_failure: Optional[str] = None
        self._last_seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        link.on_ack = self._wake.set

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread.start()

    def notify(self) -> None:
        """Something was queued: look at the outbox now rather than at the next tick."""
        self._wake.set()

    @property
    def inflight(self) -> int:
        """Messages handed to the broker and not yet acknowledged."""
        return len(self._inflight)

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._inflight and not self._settled and self._outbox.stats().depth == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the thread and join it."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._settle_acks()
                self._send_more()
            except Exception:  # a failing disk must not end delivery for good
                log.exception("delivery step failed; retrying")
                self._stop.wait(1.0)

    def _settle_acks(self) -> None:
        """Delete what the broker answered; a delete that fails is kept and tried again on the
        next step (it is never sent again meanwhile)."""
        for mid, accepted, reason in self._link.acknowledgements():
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                self._settled[seq] = (accepted, reason)
        failure = None
        for seq, (accepted, reason) in sorted(self._settled.items()):
            try:
                if accepted:
                    self._outbox.acknowledge(seq)
                else:
                    self._outbox.reject(seq, reason)
            except OutboxError as exc:
                failure = exc.message
                continue
            del self._settled[seq]
        self._report_deletes(failure)

    def _report_deletes(self, failure: Optional[str]) -> None:
        """Log when deleting acknowledged messages starts failing and when it works again."""
        if failure is not None and self._delete_failure is None:
            log.error("cannot delete %d acknowledged messages from the outbox (%s); retrying",
                      len(self._settled), failure)
        elif failure is None and self._delete_failure is not None:
            log.info("acknowledged messages deleted from the outbox again")
        self._delete_failure = failure

    def _send_more(self) -> None:
        free = self._window - len(self._inflight)
        if not self._link.connected or free <= 0:
            return
        for message in self._outbox.pending(self._last_seq, free):
            self._inflight[self._link.publish(message.topic, message.payload)] = message.seq
            self._last_seq = message.seq
