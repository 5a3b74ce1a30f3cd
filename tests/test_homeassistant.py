"""Home Assistant MQTT discovery against a real Mosquitto and a real daemon: the configs as Home
Assistant reads them, their templates applied (with Jinja2, as Home Assistant does) to the
daemon's real messages, the birth message, the buttons, and the clearing once turned off."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import jinja2
import jsonschema
import pytest

from daemon_kit import Daemon, Subscriber, wait_for
from edge.models.calibration import render_page

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "edge" / "schemas" /
                     "homeassistant-discovery.schema.json").read_text())
PREFIX = "homeassistant"
DEVICE = "test-box"
# What Home Assistant's MQTT integration requires of each component's discovery config
# (https://www.home-assistant.io/integrations/sensor.mqtt/, binary_sensor.mqtt/, button.mqtt/),
# plus what discovery needs to group entities under one device and keep them apart.
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"},
            "button": {"command_topic"}}
EVERY_ENTITY = {"unique_id", "name", "device"}
ENTITIES = {
    ("sensor", "last_text"), ("sensor", "last_error"), ("sensor", "processed"),
    ("sensor", "failed"), ("sensor", "outbox_depth"), ("sensor", "latency_p50"),
    ("sensor", "memory_rss"), ("sensor", "memory_budget"), ("binary_sensor", "connectivity"),
    ("button", "rescan"), ("button", "retry_failed"), ("sensor", "camera_door"),
}
TEMPLATES = jinja2.Environment()


def render(template: str, message: dict) -> str:
    """A value template applied to a message, as Home Assistant does: the JSON as `value_json`."""
    return TEMPLATES.from_string(template).render(value_json=message).strip()


def configs(subscriber: Subscriber) -> dict[str, dict]:
    """The last non-empty config seen per discovery topic."""
    found = {}
    for message in subscriber.messages:
        if message.topic.startswith(PREFIX + "/") and message.topic.endswith("/config"):
            if message.payload:
                found[message.topic] = json.loads(message.payload)
            else:
                found.pop(message.topic, None)
    return found


def config_of(found: dict[str, dict], component: str, object_id: str) -> dict:
    return found[f"{PREFIX}/{component}/{DEVICE}/{object_id}/config"]


@pytest.fixture
def daemon_with_discovery(tmp_path, broker):
    spool = tmp_path / "box" / "spool"
    daemon = Daemon(tmp_path / "box", broker.port, {
        "homeassistant": {"discovery": True},
        # a camera that cannot be opened: its entity is there, its state says so
        "sources": {"folders": [{"path": str(spool), "settle_seconds": 0.5}],
                    "cameras": [{"name": "door", "url": str(tmp_path / "no-such-camera.mp4")}]},
    }).start()
    yield daemon
    if daemon.alive():
        daemon.kill()


def test_discovery_configs_are_complete_and_their_templates_read_the_real_messages(
        broker, daemon_with_discovery):
    subscriber = Subscriber(broker.port, "#")
    daemon = daemon_with_discovery
    daemon.wait_ready(subscriber)
    found = wait_for(lambda: len(configs(subscriber)) == len(ENTITIES) and configs(subscriber),
                     20, "every discovery config")
    assert {tuple(topic.split("/")[1:4:2]) for topic in found} == ENTITIES
    late = Subscriber(broker.port, f"{PREFIX}/#")
    retained = wait_for(lambda: len(late.messages) == len(found) and late.messages, 10,
                        "the configs, retained, for a subscriber that comes later")
    assert all(m.retain for m in retained) and {m.topic for m in retained} == set(found)
    late.close()
    for topic, config in found.items():
        component = topic.split("/")[1]
        jsonschema.validate(config, SCHEMA)
        assert REQUIRED[component] | EVERY_ENTITY <= set(config), topic
        assert config["device"]["identifiers"] == [f"edge_ocr_{DEVICE}"]
        if topic.split("/")[3] != "connectivity":
            assert config["availability"][0]["topic"] == f"edge-ocr/{DEVICE}/status"
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    assert len({json.dumps(c["device"], sort_keys=True) for c in found.values()}) == 1

    page = render_page(31, lines=5)
    daemon.drop("receipt.jpg", cv2.imencode(".jpg", page.image)[1].tobytes())
    result = wait_for(lambda: subscriber.on("results"), 60, "a result")[0].json()
    assert result["text"].strip()
    last_text = config_of(found, "sensor", "last_text")
    assert last_text["state_topic"] == f"edge-ocr/{DEVICE}/results"
    assert render(last_text["value_template"], result) == result["text"][:255]
    assert last_text["json_attributes_topic"] == last_text["state_topic"]

    health = wait_for(lambda: [m.json() for m in subscriber.on("health")
                               if m.json()["processed"] == 1], 20, "health after the frame")[-1]
    state = lambda object_id: render(config_of(found, "sensor", object_id)["value_template"],
                                     health)
    assert state("processed") == "1" and state("failed") == "0" and state("outbox_depth") == "0"
    assert float(state("latency_p50")) > 0
    assert float(state("memory_rss")) == health["memory"]["rss_mb"]
    assert state("memory_budget") == "None"  # no budget set: unknown in Home Assistant
    assert state("camera_door") == health["sources"]["door"]["state"] != "streaming"
    memory = config_of(found, "sensor", "memory_rss")
    assert json.loads(render(memory["json_attributes_template"], health))["plan"]

    status = subscriber.on("status")[-1].json()
    connectivity = config_of(found, "binary_sensor", "connectivity")
    assert render(connectivity["value_template"], status) == "ON"
    availability = last_text["availability"][0]["value_template"]
    assert render(availability, status) == "online"
    assert render(availability, {"state": "stopped"}) == "offline"
    assert render(connectivity["value_template"], {"state": "offline"}) == "OFF"


def test_birth_message_republishes_and_buttons_run_the_commands(broker, daemon_with_discovery):
    subscriber = Subscriber(broker.port, "#")
    daemon = daemon_with_discovery
    daemon.wait_ready(subscriber)
    first = wait_for(lambda: len(configs(subscriber)) == len(ENTITIES) and configs(subscriber),
                     20, "every discovery config")
    seen = len(subscriber.messages)

    def republished() -> dict[str, dict]:
        return {m.topic: json.loads(m.payload) for m in subscriber.messages[seen:]
                if m.topic in first and m.payload}

    subscriber.publish(f"{PREFIX}/status", b"offline")
    time.sleep(1)
    assert republished() == {}  # only `online` asks for them
    subscriber.publish(f"{PREFIX}/status", b"online")  # Home Assistant (re)started
    again = wait_for(lambda: len(republished()) == len(first) and republished(), 20,
                     "every config published again")
    assert again == first

    (daemon.state / "failed").mkdir(parents=True, exist_ok=True)
    for object_id, command in (("rescan", "rescan"), ("retry_failed", "retry-failed")):
        button = config_of(first, "button", object_id)
        subscriber.publish(button["command_topic"], button["payload_press"].encode())
        reply = wait_for(lambda: [m.json() for m in subscriber.on("replies")
                                  if m.json()["command"] == command], 10, f"{command} reply")[0]
        assert reply["ok"] is True, reply


def test_turning_discovery_off_clears_the_retained_configs(broker, daemon_with_discovery):
    subscriber = Subscriber(broker.port, "#")
    daemon = daemon_with_discovery
    daemon.wait_ready(subscriber)
    published = wait_for(lambda: len(configs(subscriber)) == len(ENTITIES) and configs(subscriber),
                         20, "every discovery config")
    assert daemon.terminate()[0] == 0
    ledger = daemon.state / "homeassistant-discovery.json"
    assert set(json.loads(ledger.read_text())["topics"]) == set(published)

    off = Daemon(daemon.root, daemon.port, {"homeassistant": {"discovery": False}}).start()
    try:
        clears = wait_for(lambda: {m.topic for m in subscriber.messages
                                   if m.topic in published and not m.payload} == set(published),
                          60, "an empty retained message on every config topic")
        assert clears
        assert off.terminate()[0] == 0
    finally:
        if off.alive():
            off.kill()
    assert not ledger.exists()
    late = Subscriber(broker.port, f"{PREFIX}/#")  # retained configs would arrive at once
    try:
        time.sleep(1.5)
        assert late.messages == []
    finally:
        late.close()
        subscriber.close()
