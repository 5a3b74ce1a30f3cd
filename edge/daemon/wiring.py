"""Wires the daemon from the typed config: the one place that builds a `Service`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from edge import __version__
from edge.config import EdgeConfig, model_dir, runtime_dir, state_dir
from edge.daemon import budget
from edge.daemon.budget import MemoryModel, Planner
from edge.daemon.budgeted_engine import DaemonEngine
from edge.daemon.control import Commands
from edge.daemon.intake import Intake
from edge.daemon.recent import RecentOutcomes
from edge.daemon.runtime import RuntimeDir
from edge.daemon.service import Service
from edge.daemon.statuspage import PageContent, StatusPage
from edge.delivery import hass, payload
from edge.delivery.discovery import HomeAssistantDiscovery
from edge.delivery.mqtt import Delivery, MqttLink
from edge.delivery.outbox import Outbox, OutboxLimits
from edge.delivery.payload import Envelope, Topics
from edge.delivery.sink import ResultSink
from edge.errors import ConfigError
from edge.models.factory import load_models
from edge.models.store import ModelStore
from edge.ocr.session import resolve_device
from edge.sources.camera import CameraSource
from edge.sources.folder import FolderSource
from edge.sources.queue import WorkQueue
from edge.sources.spool import Spool, SpoolSettings

log = logging.getLogger(__name__)


def build_service(config: EdgeConfig) -> Service:
    """Everything `edge-ocr run` needs, connected; nothing is started yet."""
    if not config.sources.folders and not config.sources.cameras:
        raise ConfigError("no sources: set sources.folders or sources.cameras",
                          "see config/edge-ocr.yaml")
    runtime = RuntimeDir(runtime_dir(config))
    runtime.prepare()
    state = state_dir(config)
    engine = build_engine(config, state)
    engine.warm_up()
    topics = Topics(config.mqtt.topic_prefix, config.device_id)
    envelope = Envelope(config.device_id, {"pack": config.ocr.pack,
                                           "variant": engine.models.variant.precision,
                                           "charset": config.ocr.charset})
    outbox = Outbox(config.outbox.path or state / "outbox.db", payload.encode, OutboxLimits(
        int(config.outbox.max_mb * 1024 * 1024), config.outbox.max_age_hours * 3600))
    queue = WorkQueue(config.resources.queue_size)
    link = MqttLink(config.mqtt, topics, on_command=lambda command: commands(command))
    delivery = Delivery(outbox, link, config.mqtt.inflight)
    sink = ResultSink(outbox, topics, envelope, delivery.notify)
    folders = [_folder(config, state, source, queue, sink) for source in config.sources.folders]
    cameras = [CameraSource(camera, queue, sink) for camera in config.sources.cameras]
    service = Service(engine, queue, outbox, link, delivery, [*folders, *cameras], runtime,
                      topics, config.health.interval_seconds, Intake(outbox.has_room),
                      **_beside(config, state, link, topics, engine, lambda: service.snapshot()))
    commands = Commands(link, queue, envelope, status=service.snapshot,
                        rescan=lambda: _rescan_all(folders),
                        retry_failed=lambda: sum(folder.retry_failed() for folder in folders))
    return service


def _beside(config: EdgeConfig, state: Path, link: MqttLink, topics: Topics,
            engine: DaemonEngine, snapshot) -> dict[str, object]:
    """What runs beside the worker: discovery (always: off, it clears what it published
    before) and, when `http.listen` is set, the status page with the outcomes it shows."""
    extras: list[object] = [_discovery(config, state, link, topics, engine)]
    if config.http.listen is None:
        return {"extras": extras}
    recent = RecentOutcomes(config.http.recent, config.http.image_side)
    content = PageContent(config.device_id, snapshot, recent, config.http.refresh_seconds,
                          f"{topics.prefix}/{topics.device}")
    return {"extras": [*extras, StatusPage(config.http.address(), content)], "watcher": recent}


def _discovery(config: EdgeConfig, state: Path, link: MqttLink, topics: Topics,
               engine: DaemonEngine) -> HomeAssistantDiscovery:
    settings = config.homeassistant
    ledger = state / "homeassistant-discovery.json"
    if not settings.discovery:
        return HomeAssistantDiscovery(link, [], ledger, birth_topic=None)
    device = hass.DeviceInfo(config.device_id, f"edge-ocr {config.ocr.pack} "
                             f"{engine.models.variant.precision}", __version__)
    cameras = [camera.name for camera in config.sources.cameras]
    messages = hass.discovery_messages(settings.prefix, topics, device, cameras)
    return HomeAssistantDiscovery(link, messages, ledger, hass.birth_topic(settings.prefix))


def _rescan_all(folders: list[FolderSource]) -> None:
    for folder in folders:
        folder.rescan()


def build_engine(config: EdgeConfig, state: Optional[Path] = None) -> DaemonEngine:
    """The engine under the config's RAM plan; the memory model is cached in `state` (the
    config's state folder by default)."""
    state = state or state_dir(config)
    store = ModelStore(model_dir(config))
    if config.resources.memory_mb == "auto":
        engine = DaemonEngine(load_models(config.ocr, store), config.ocr, config.images,
                              box=budget.box_memory())
        log.info("no RAM budget set (resources.memory_mb: auto): %s", engine.guard)
        return engine
    if not config.resources.memory_mb:
        return DaemonEngine(load_models(config.ocr, store), config.ocr, config.images)
    # measured before this process loads the models: both copies would count in a cgroup limit
    planner = build_planner(config, state)
    engine = DaemonEngine(load_models(config.ocr, store, tiled=True), config.ocr, config.images,
                          planner)
    log.info("memory model %s; plan: %s; %s", planner.model, engine.plan.describe(),
             planner.in_words(engine.plan))
    return engine


def build_planner(config: EdgeConfig, state: Optional[Path] = None) -> Planner:
    """The RAM planner for a config with a budget in MB: the pack's memory model (measured
    once in a child, then cached in `state`) and what the config asks for."""
    state = state or state_dir(config)

    def planner(model: MemoryModel) -> Planner:
        return Planner(model, config.resources.memory_mb, config.ocr.det_limit_side,
                       config.ocr.rec_batch, config.images.max_side,
                       1 if config.images.grey else 3)

    store = ModelStore(model_dir(config))
    return planner(_memory_model(config, store, state, lambda model: planner(model).fits()))


def _memory_model(config: EdgeConfig, store: ModelStore, state: Path,
                  fits: Callable[[MemoryModel], bool]) -> MemoryModel:
    variant = store.choose(config.ocr.pack, config.ocr.precision,
                           resolve_device(config.ocr.device))
    key = config.ocr.model_copy(update={"precision": variant.precision}).model_dump_json()
    cache = state / f"memory-model-{config.ocr.pack}.json"
    return budget.measured_model(key, model_dir(config), cache, fits)


def _folder(config: EdgeConfig, state: Path, source, queue: WorkQueue,
            sink: ResultSink) -> FolderSource:
    spool = config.spool
    done = (spool.done_dir or state / "done") if spool.after == "move" else None
    settings = SpoolSettings(
        done_dir=done, failed_dir=spool.failed_dir or state / "failed",
        max_bytes=int(config.images.max_file_mb * 1024 * 1024),
        ignore_suffixes=tuple(spool.ignore_suffixes),
        done_max_age_s=spool.done_max_age_days * 86400,
        done_max_bytes=int(spool.done_max_mb * 1024 * 1024))
    return FolderSource(Spool(source.path, settings), queue, sink, source.settle_seconds,
                        spool.reconcile_seconds)

