"""`edge-ocr doctor`: checks what decides whether the daemon will work here, one line each.

Every check returns a `Finding`: ok, warn or fail, what was seen, and the fix. Nothing is
changed on the machine; the broker check connects and disconnects, the camera check opens and
releases each camera (and fits its region, if it has one, to the frame it delivered).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from edge.config import CameraSource, EdgeConfig, model_dir, read_secret, state_dir
from edge.errors import EdgeError
from edge.models.cpu import CpuInfo, cpu_info


@dataclass(frozen=True)
class Finding:
    """One check's verdict."""

    level: str  # ok | warn | fail
    check: str
    seen: str
    fix: str = ""

    def line(self) -> str:
        """`ok    check: seen` and, for problems, the fix."""
        text = f"{self.level:<5} {self.check}: {self.seen}"
        return f"{text}\n      fix: {self.fix}" if self.fix and self.level != "ok" else text


def run_checks(config: EdgeConfig) -> Iterator[Finding]:
    """Every check, in the order a person would fix them."""
    checks: list[Callable[[EdgeConfig], Finding | list[Finding]]] = [
        check_models, check_cpu, check_precision, check_memory_plan, check_memory_controller,
        check_spool, check_disk,
        check_broker, check_cameras]
    for check in checks:
        try:
            found = check(config)
        except EdgeError as exc:
            found = Finding("fail", check.__name__.removeprefix("check_"), exc.message, exc.fix)
        yield from found if isinstance(found, list) else [found]


def check_models(config: EdgeConfig) -> Finding:
    """The configured pack is present and every file matches its pinned sha256."""
    from edge.models.store import ModelStore

    store = ModelStore(model_dir(config))
    pack = config.ocr.pack
    variants = store.variants(pack)
    if not variants:
        return Finding("fail", "models", f"{pack} is not in {store.root}",
                       f"edge-ocr models pull {pack} && edge-ocr models quantize {pack}")
    problems = store.verify(pack)
    if problems:
        return Finding("fail", "models", f"{pack} damaged: {', '.join(problems)}",
                       f"edge-ocr models pull {pack} --force")
    return Finding("ok", "models", f"{pack} verified; variants {', '.join(sorted(variants))}")


def check_cpu(config: EdgeConfig, cpu: CpuInfo | None = None) -> Finding:
    """The CPU features that make the int8 path fast: AVX2/VNNI on x86; NEON, dot product
    (asimddp) and int8 matrix multiply (i8mm) on arm64."""
    cpu = cpu or cpu_info()
    seen = f"{cpu.arch}, {cpu.cores} cores: {cpu.described()}"
    if cpu.is_arm64:
        if not cpu.has("asimd"):
            return Finding("fail", "cpu", f"{seen}; no NEON", "ONNX Runtime needs NEON on arm64")
        if cpu.has("asimddp"):
            return Finding("ok", "cpu", f"{seen}: int8 runs on the dot-product instructions")
        return Finding("warn", "cpu", f"{seen}: no dot product, int8 may gain little",
                       f"edge-ocr models measure {config.ocr.pack} (precision auto then "
                       "runs the faster variant)")
    if cpu.arch in ("x86_64", "AMD64"):
        if cpu.has("avx512_vnni") or cpu.has("avx_vnni"):
            return Finding("ok", "cpu", f"{seen}: int8 is fastest")
        if cpu.has("avx2"):
            return Finding("ok", "cpu", f"{seen}: no VNNI, int8 helps less")
        return Finding("warn", "cpu", f"{seen}: without AVX2 int8 may be slower than fp32",
                       f"edge-ocr models measure {config.ocr.pack}")
    return Finding("warn", "cpu", f"{cpu.arch}: not a tested architecture", "")


def check_precision(config: EdgeConfig) -> Finding:
    """Which variant the engine will load, and the measurement that chose it."""
    from edge.models.choice import explain, read_measurement
    from edge.models.store import ModelStore
    from edge.ocr.session import resolve_device

    store = ModelStore(model_dir(config))
    ocr = config.ocr
    if not store.variants(ocr.pack):
        return Finding("warn", "precision", f"{ocr.pack} is not pulled", "see the models line")
    device = resolve_device(ocr.device)
    if ocr.precision != "auto":
        chosen = store.choose(ocr.pack, ocr.precision, device).precision
        return Finding("ok", "precision", f"{ocr.pack} {chosen} on {device} (set in the config)")
    chosen, why = store.auto_precision(ocr.pack, device)
    seen = f"{ocr.pack} {chosen} on {device}, auto: {why}"
    measurement = read_measurement(store.pack_dir(ocr.pack))
    if why.startswith("measured"):
        return Finding("ok", "precision", f"{seen}; {explain(measurement)}")
    if device == "cuda":
        return Finding("ok", "precision", seen)
    return Finding("warn", "precision", seen, f"edge-ocr models measure {ocr.pack}")


def check_memory_plan(config: EdgeConfig) -> Finding:
    """What resources.memory_mb costs, in words: the plan for a budget, the guard for auto."""
    budget_mb = config.resources.memory_mb
    if budget_mb == "auto":
        from edge.daemon.budget import box_memory

        box = box_memory()
        return Finding("ok", "RAM", f"no budget (auto): an image is decoded only if it fits in "
                                    f"{box.limit_mb} MB ({box.source})")
    if not budget_mb:
        return Finding("ok", "RAM", "no budget (memory_mb: 0): images are not held to any size")
    from edge.daemon.wiring import build_planner

    planner = build_planner(config)
    plan = planner.plan()
    return Finding("ok", "RAM plan", f"{plan.describe()}; {planner.in_words(plan)}")


def check_memory_controller(config: EdgeConfig,
                            controllers: Path = Path("/sys/fs/cgroup/cgroup.controllers"),
                            cgroups: Path = Path("/proc/cgroups")) -> Finding:
    """MemoryMax is silently ignored where the kernel's memory controller is off."""
    try:
        enabled = "memory" in controllers.read_text().split()
        where = "cgroup v2"
    except OSError:  # cgroup v1: /proc/cgroups lists each controller and whether it is enabled
        try:
            rows = [line.split() for line in cgroups.read_text().splitlines()[1:]]
        except OSError:
            return Finding("warn", "memory controller", "cannot tell: no cgroup information",
                           "MemoryMax may not be enforced; rely on resources.memory_mb")
        enabled = any(row[0] == "memory" and row[-1] == "1" for row in rows if row)
        where = "cgroup v1"
    if enabled:
        return Finding("ok", "memory controller",
                       f"on ({where}): MemoryHigh/MemoryMax are enforced")
    return Finding("warn", "memory controller", "off: systemd ignores MemoryMax here",
                   "add cgroup_enable=memory to the kernel command line "
                   "(/boot/firmware/cmdline.txt on Raspberry Pi OS) and reboot")


def check_spool(config: EdgeConfig) -> list[Finding]:
    """Each spool folder exists and the daemon's user may read, write and list it."""
    findings = []
    for folder in config.sources.folders:
        path = folder.path
        if not path.is_dir():
            findings.append(Finding("fail", "spool", f"{path} does not exist",
                                    f"mkdir -p {path} and give the daemon's user write access"))
        elif not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            findings.append(Finding("fail", "spool", f"{path} is not writable by this user",
                                    f"chgrp edge-ocr {path} && chmod 2770 {path}"))
        else:
            findings.append(Finding("ok", "spool", f"{path} is readable and writable"))
    return findings or [Finding("ok", "spool", "no spool folders configured")]


def check_disk(config: EdgeConfig) -> Finding:
    """Room for a full outbox in the state folder."""
    folder = state_dir(config)
    probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    free_mb = shutil.disk_usage(probe).free / 1024 / 1024
    need = config.outbox.max_mb
    if free_mb < need:
        return Finding("warn", "disk", f"{free_mb:.0f} MB free at {probe}, the outbox may grow "
                       f"to {need:.0f} MB", "free space, or lower outbox.max_mb")
    return Finding("ok", "disk", f"{free_mb:.0f} MB free at {probe} (outbox up to {need:.0f} MB)")


def check_broker(config: EdgeConfig, timeout: float = 5.0) -> Finding:
    """The broker answers and accepts these credentials."""
    import paho.mqtt.client as paho

    mqtt = config.mqtt
    answered = threading.Event()
    outcome: dict[str, str] = {}

    def connected(client, userdata, flags, reason_code, properties):
        outcome["reason"] = str(reason_code)
        outcome["ok"] = "" if reason_code.is_failure else "yes"
        answered.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         protocol=paho.MQTTv5 if mqtt.protocol == "5" else paho.MQTTv311,
                         client_id=f"edge-ocr-doctor-{config.device_id}")
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, read_secret(mqtt.password_file)
                               if mqtt.password_file else None)
    if mqtt.tls is not None:
        from edge.delivery.mqtt import set_tls
        set_tls(client, mqtt)
    client.on_connect = connected
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        client.connect(mqtt.host, mqtt.port, keepalive=10)
    except OSError as exc:
        return Finding("fail", "broker", f"cannot reach {where}: {exc.strerror or exc}",
                       "start the broker, or fix mqtt.host and mqtt.port")
    client.loop_start()
    answered.wait(timeout)
    client.disconnect()
    client.loop_stop()
    if not answered.is_set():
        return Finding("fail", "broker", f"{where} did not answer within {timeout:.0f} s",
                       "check that it is an MQTT broker (and TLS settings)")
    if not outcome["ok"]:
        return Finding("fail", "broker", f"{where} refused the connection: {outcome['reason']}",
                       "check mqtt.username and the password file")
    return Finding("ok", "broker", f"{where} accepted the connection (MQTT {mqtt.protocol})")


def check_cameras(config: EdgeConfig) -> list[Finding]:
    """Each camera opens and delivers a frame."""
    from edge.sources.camera import open_capture

    findings = []
    for camera in config.sources.cameras:
        capture = open_capture(camera)
        ok, frame = capture.read()
        capture.release()
        findings.append(Finding("ok" if ok else "fail", f"camera {camera.name}",
                                f"{camera.url!r} " + ("delivers frames" if ok else
                                                      "opened but delivered no frame"),
                                "check the device, its permissions (group video) or the URL"))
        if ok and camera.region is not None:
            findings.append(check_region(camera, frame))
    return findings


def check_region(camera: CameraSource, frame) -> Finding:
    """Where the camera's region falls in a frame it delivered, or that it misses it."""
    from edge.sources.region import RegionCutter

    try:
        cut = RegionCutter(camera.name, camera.region)(frame)
    except EdgeError as exc:
        return Finding("fail", f"camera {camera.name} region", exc.message, exc.fix)
    height, width = cut.pixels.shape[:2]
    where = cut.placement
    return Finding("ok", f"camera {camera.name} region",
                   f"{width}x{height} pixels at {where.x},{where.y} of its "
                   f"{where.frame_width}x{where.frame_height} frame are read")
