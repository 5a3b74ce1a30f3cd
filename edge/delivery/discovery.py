"""Publishes the Home Assistant discovery configs, and takes back the ones no longer wanted.

The configs are retained, so they outlive the daemon: a config the daemon stops wanting (discovery
turned off, a camera removed, the prefix changed) must be cleared with an empty retained
message, or Home Assistant keeps the entity forever. The daemon therefore remembers every topic
it published a config on in a small file in its state folder (the ledger). On each connection it
clears what the ledger holds beyond the current configs and publishes the current ones; when
Home Assistant's birth message (`<prefix>/status` = `online`) arrives it publishes them again.
A topic leaves the ledger only once the broker has acknowledged its clearing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from edge.delivery.hass import DiscoveryMessage
from edge.delivery.mqtt import MqttLink
from edge.errors import EdgeError

log = logging.getLogger(__name__)


class HomeAssistantDiscovery:
    """The discovery configs of one daemon (none when discovery is off) and their ledger."""

    def __init__(self, link: MqttLink, messages: Sequence[DiscoveryMessage], ledger: Path,
                 birth_topic: Optional[str]) -> None:
        self._link = link
        self._messages = list(messages)
        self._ledger = ledger
        self._lock = threading.Lock()  # paho's thread publishes; the worker stops
        self._clearing: dict[str, Callable[[], bool]] = {}
        link.on_connected(self.announce)
        if birth_topic is not None and self._messages:
            link.subscribe(birth_topic, self._birth)

    def start(self) -> None:
        """Nothing to start: the link's connection calls `announce`."""

    def stop(self) -> None:
        """Forget the cleared topics the broker has acknowledged."""
        with self._lock:
            self._forget_cleared()

    def announce(self) -> None:
        """Clear what is no longer wanted, then publish the current configs (retained)."""
        with self._lock:
            self._forget_cleared()
            wanted = {message.topic for message in self._messages}
            stale = sorted(self._remembered() - wanted)
            self._remember(wanted | set(stale))
            for topic in stale:
                self._clearing[topic] = self._link.publish_tracked(topic, b"", retain=True)
            self._publish_configs()
        if stale:
            log.info("Home Assistant discovery: cleared %d configs no longer wanted", len(stale))

    def _birth(self, body: bytes) -> None:
        if body.strip() == b"online":
            log.info("Home Assistant came online: publishing the discovery configs again")
            with self._lock:
                self._publish_configs()

    def _publish_configs(self) -> None:
        for message in self._messages:
            try:
                self._link.publish(message.topic, message.body, retain=True)
            except EdgeError as exc:
                log.warning("cannot publish the discovery config %s: %s", message.topic,
                            exc.message)

    def _forget_cleared(self) -> None:
        done = [topic for topic, published in self._clearing.items() if published()]
        if not done:
            return
        for topic in done:
            del self._clearing[topic]
        self._remember(self._remembered() - set(done))

    def _remembered(self) -> set[str]:
        try:
            return set(json.loads(self._ledger.read_text(encoding="utf-8"))["topics"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s (%s): configs published before may stay", self._ledger,
                        exc)
            return set()

    def _remember(self, topics: set[str]) -> None:
        """Write the ledger atomically; an empty one is removed."""
        try:
            if not topics:
                self._ledger.unlink(missing_ok=True)
                return
            self._ledger.parent.mkdir(parents=True, exist_ok=True)
            temp = self._ledger.with_name(self._ledger.name + ".new")
            temp.write_text(json.dumps({"topics": sorted(topics)}, indent=1), encoding="utf-8")
            os.replace(temp, self._ledger)
        except OSError as exc:
            log.warning("cannot write %s (%s): discovery configs may not be cleared later",
                        self._ledger, exc.strerror)
