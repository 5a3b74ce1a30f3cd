"""Home Assistant MQTT discovery configs: this daemon as one device with its entities.

These bodies follow Home Assistant's discovery schema, not the daemon's own versioned messages,
so they are built here rather than in `payload.py` (which only encodes them). Every entity reads
a topic the daemon already publishes (`results`, `errors`, `health`, `status`) through a value
template, and the buttons publish to the existing commands: discovery adds no message of its own
beyond the configs. Topics: `<discovery prefix>/<component>/<device_id>/<object_id>/config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from edge.delivery import payload
from edge.delivery.payload import Topics

HA_STATE_MAX = 255  # Home Assistant refuses longer states
ONLINE = "{{ 'online' if value_json.state == 'online' else 'offline' }}"
LAST_TEXT = f"{{{{ value_json.text[:{HA_STATE_MAX}] }}}}"


@dataclass(frozen=True)
class DeviceInfo:
    """What Home Assistant shows of the box."""

    device_id: str
    model: str
    sw_version: str


@dataclass(frozen=True)
class Entity:
    """One discovered entity: its component, its id under the device and its own keys."""

    component: str
    object_id: str
    keys: dict[str, Any]
    available_with_daemon: bool = True


@dataclass(frozen=True)
class DiscoveryMessage:
    """A retained config: its topic and its JSON body."""

    topic: str
    body: bytes


def birth_topic(prefix: str) -> str:
    """Where Home Assistant says `online` when it (re)starts."""
    return f"{prefix}/status"


def discovery_messages(prefix: str, topics: Topics, device: DeviceInfo,
                       cameras: Sequence[str] = ()) -> list[DiscoveryMessage]:
    """The config of every entity, for the given cameras."""
    entities = [*daemon_entities(topics), *(camera_entity(topics, name) for name in cameras)]
    return [DiscoveryMessage(f"{prefix}/{e.component}/{device.device_id}/{e.object_id}/config",
                             payload.encode(entity_config(e, topics, device)))
            for e in entities]


def entity_config(entity: Entity, topics: Topics, device: DeviceInfo) -> dict[str, Any]:
    """An entity's keys with the unique id, the device, the origin and availability."""
    config = {"unique_id": f"edge_ocr_{device.device_id}_{entity.object_id}", **entity.keys,
              "device": {"identifiers": [f"edge_ocr_{device.device_id}"],
                         "name": device.device_id, "manufacturer": "edge-ocr",
                         "model": device.model, "sw_version": device.sw_version},
              "origin": {"name": "edge-ocr", "sw_version": device.sw_version}}
    if entity.available_with_daemon:  # unavailable while `status` says offline or stopped
        config["availability"] = [{"topic": topics.status, "value_template": ONLINE}]
    return config


def daemon_entities(topics: Topics) -> list[Entity]:
    """The entities every box has: what it read, its counters, its memory, its link, buttons."""
    health = topics.health
    return [
        _sensor(topics.results, "last_text", "Last text", LAST_TEXT,
                icon="mdi:text-recognition", json_attributes_topic=topics.results),
        _sensor(topics.errors, "last_error", "Last error", "{{ value_json.error.code }}",
                icon="mdi:image-broken-variant", json_attributes_topic=topics.errors),
        _sensor(health, "processed", "Frames processed", "{{ value_json.processed }}",
                state_class="total_increasing", icon="mdi:image-check"),
        _sensor(health, "failed", "Frames failed", "{{ value_json.failed }}",
                state_class="total_increasing", icon="mdi:image-remove"),
        _sensor(health, "outbox_depth", "Outbox depth", "{{ value_json.outbox.depth }}",
                state_class="measurement", unit_of_measurement="messages", icon="mdi:tray-full",
                json_attributes_template="{{ value_json.outbox | tojson }}"),
        _sensor(health, "latency_p50", "Latency p50", "{{ value_json.latency_ms.p50 }}",
                device_class="duration", unit_of_measurement="ms", state_class="measurement",
                entity_category="diagnostic"),
        _sensor(health, "memory_rss", "Memory (RSS)", "{{ value_json.memory.rss_mb }}",
                device_class="data_size", unit_of_measurement="MB", state_class="measurement",
                entity_category="diagnostic",
                json_attributes_template="{{ value_json.memory | tojson }}"),
        _sensor(health, "memory_budget", "Memory budget used",
                "{{ (100 * value_json.memory.rss_mb / value_json.memory.budget_mb) | round(1) "
                "if value_json.memory.budget_mb else None }}",  # None: unknown, no budget set
                unit_of_measurement="%", state_class="measurement", entity_category="diagnostic"),
        Entity("binary_sensor", "connectivity", {
            "name": "Connectivity", "state_topic": topics.status, "qos": 1,
            "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
            "device_class": "connectivity", "entity_category": "diagnostic"},
            available_with_daemon=False),  # it must be able to say "disconnected"
        _button("rescan", "Rescan spool", topics.leaf("cmd/rescan"), "mdi:folder-refresh"),
        _button("retry_failed", "Retry failed files", topics.leaf("cmd/retry-failed"),
                "mdi:file-restore"),
    ]


def camera_entity(topics: Topics, name: str) -> Entity:
    """A camera's state (connecting, streaming, reconnecting, ended), its counters as
    attributes. Camera names are letters, digits, `_` and `-` (the config checks)."""
    source = f"value_json.sources['{name}']"
    return _sensor(topics.health, f"camera_{name}", f"Camera {name}", f"{{{{ {source}.state }}}}",
                   icon="mdi:cctv", json_attributes_template=f"{{{{ {source} | tojson }}}}")


def _sensor(topic: str, object_id: str, name: str, template: str, **keys: Any) -> Entity:
    """A sensor whose state (and, with a `json_attributes_template`, attributes) come from
    one topic."""
    if "json_attributes_template" in keys:
        keys = {"json_attributes_topic": topic, **keys}
    return Entity("sensor", object_id, {"name": name, "state_topic": topic, "qos": 1,
                                        "value_template": template, **keys})


def _button(object_id: str, name: str, command_topic: str, icon: str) -> Entity:
    """A button publishing `{}` (an empty options object) to one of the daemon's commands."""
    return Entity("button", object_id, {"name": name, "command_topic": command_topic,
                                        "payload_press": "{}", "qos": 1, "icon": icon,
                                        "entity_category": "config"})
