"""arm64, under qemu-user emulation: the installer, the CLI and the daemon on a Debian arm64 root.

Marked `arm64` (not in the default run): `.ci/run` runs it as root, after the project's scripts
installed qemu-user-static, binfmt-support, debootstrap and systemd-container. A clean copy of
the repository (`git archive HEAD`) goes into a fresh copy of the cached root
(`arm64_root.py`), and `scripts/install.sh` runs inside as it would on a Raspberry Pi. The
host's pulled and quantized packs are copied in first (the files are the same on every
architecture; quantizing under emulation would take an hour), so the installer finds them
present and verifies them. Emulated code runs about a hundred times slower than native: the
images are small rendered pages, a few lines each. Timings of each step go to
~/.cache/edge-ocr/arm64-test/timings.log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import yaml

from arm64_root import Arm64Root, Booted, elf_machine, record_step, signal_inside
from daemon_kit import Broker, Subscriber, wait_for
from edge.cli.evaluate import polygon_iou
from edge.config import default_model_dir
from edge.models.calibration import render_page
from edge.models.store import sha256_of

pytestmark = [
    pytest.mark.arm64,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-nspawn")
                       or not shutil.which("debootstrap")
                       or not Path("/usr/lib/binfmt.d/qemu-aarch64.conf").exists(),
                       reason="needs root, systemd-nspawn, debootstrap and qemu-user-static"),
]

PROJECT = Path(__file__).resolve().parents[2]
PACKS = ("ppocr-v6-small", "ppocr-v6-tiny")
MODELS = "/var/lib/edge-ocr/models"
EDGE_OCR = "/opt/edge-ocr/venv/bin/edge-ocr"
AARCH64 = 183  # ELF e_machine
# Same bars as the amd64 engine tests (tests/test_engine.py).
READ_FRACTION = {"ppocr-v6-small": 0.85, "ppocr-v6-tiny": 0.75}
PAGE_SEEDS = (100, 101)
BY_HAND = "/srv/by-hand"  # the daemon's folders when a test runs it as root, without systemd


def small_page(seed: int):
    """A few lines of known text on a 560x240 page: small enough for emulation."""
    return render_page(seed, width=560, height=240, lines=4)


@pytest.fixture(scope="module")
def copied_packs(tmp_path_factory) -> dict[str, str]:
    """sha256 of every file of the host's packs, by path relative to the model directory."""
    host = default_model_dir()
    files = [p for pack in PACKS for p in (host / pack).rglob("*") if p.is_file()]
    assert any(p.name == "det.onnx" and p.parent.name == "int8" for p in files), \
        f"no int8 variants in {host}: run scripts/setup.sh first"
    return {str(p.relative_to(host)): sha256_of(p) for p in files}


@pytest.fixture(scope="module")
def installed(tmp_path_factory, copied_packs) -> tuple[Arm64Root, str]:
    """A fresh arm64 root with edge-ocr installed by scripts/install.sh from a clean copy of the
    repository, and the installer's output."""
    root = Arm64Root.copy_of_base(tmp_path_factory.mktemp("arm64"))
    source = root.root / "root" / "edge-ocr"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    seed_models(root)
    started = time.monotonic()
    done = root.run(["/root/edge-ocr/scripts/install.sh"], timeout=2400,
                    env={"EDGE_OCR_MEASURE": "no"})
    record_step("scripts/install.sh inside the root", time.monotonic() - started)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return root, done.stdout + done.stderr


def seed_models(root: Arm64Root) -> None:
    """Copy the host's packs to where install.sh keeps them."""
    target = root.root / MODELS.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    for pack in PACKS:
        shutil.copytree(default_model_dir() / pack, target / pack)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """The host's Mosquitto on a free loopback port; the root shares the host's network."""
    broker = Broker(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


def inside(root: Arm64Root, label: str, *command: str, timeout: float = 900
           ) -> subprocess.CompletedProcess:
    """Run a command in the root and record how long it took under `label`."""
    started = time.monotonic()
    done = root.run(command, timeout=timeout)
    record_step(label, time.monotonic() - started)
    return done


def site_packages(root: Arm64Root) -> Path:
    return next((root.root / "opt/edge-ocr/venv/lib").glob("python3*/site-packages"))


def this_machine(root: Arm64Root) -> dict:
    """What the arm64 root's edge-ocr records as the machine a measurement was taken on."""
    done = root.run(["/opt/edge-ocr/venv/bin/python", "-c",
                     "import json; from edge.models.choice import this_machine; "
                     "print(json.dumps(this_machine()))"], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def record_measurement(root: Arm64Root, pack: str, machine: dict, int8_ms: float) -> None:
    """Write a measurement of `pack` taken on `machine`: fp32 at 100 ms detection, int8 at
    `int8_ms`, both agreeing fully; the recogniser alike."""
    pack_dir = root.root / MODELS.lstrip("/") / pack
    recipes = {v: json.loads((pack_dir / v / "variant.json").read_text()).get("recipe", 1)
               for v in ("fp32", "int8")}
    record = {"schema": 1, "pack": pack, "measured_at": "2025-01-01T00:00:00Z",
              "machine": machine, "page": {}, "runs": 3,
              "bound": {"det_pixels": 0.98, "lines_text": 0.8, "min_gain": 1.05},
              "variants": {"fp32": {"recipe": recipes["fp32"], "det_ms": 100.0, "rec_ms": 50.0},
                           "int8": {"recipe": recipes["int8"], "det_ms": int8_ms, "rec_ms": 50.0,
                                    "det_pixels": 1.0, "lines_text": 1.0}}}
    (pack_dir / "measurement.json").write_text(json.dumps(record))


def configure(root: Arm64Root, broker_port: int, under_systemd: bool = False) -> None:
    """The Pi profile config/examples/pi-tiny.yaml (tiny pack, Latin script) with this test's
    broker and spool; its own state and runtime folders unless systemd provides them."""
    config = yaml.safe_load((root.root / "root/edge-ocr/config/examples/pi-tiny.yaml").read_text())
    config.update({
        "device_id": "arm64-test",
        "sources": {"folders": [{"path": spool(under_systemd), "settle_seconds": 0.5}]},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "models": {"dir": MODELS},
        "health": {"interval_seconds": 5}})
    if not under_systemd:  # run by hand as root: folders of its own, not the service's
        config["paths"] = {"state_dir": f"{BY_HAND}/state", "runtime_dir": f"{BY_HAND}/run"}
        (root.root / spool(False).lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root.root / "etc/edge-ocr/edge-ocr.yaml").write_text(yaml.safe_dump(config))


def spool(under_systemd: bool) -> str:
    """The service's spool folder, or the one of the daemon run by hand."""
    return "/var/spool/edge-ocr" if under_systemd else f"{BY_HAND}/spool"


def test_install_sh_builds_the_venv_and_keeps_the_verified_packs(installed, copied_packs):
    root, output = installed
    for pack in PACKS:
        assert f"{pack}: present and verified" in output
        assert f"{pack} int8: present" in output and f"{pack} fp16: present" in output
    assert (root.root / "usr/bin/gcc").exists(), "the installer's system packages step"
    packages = site_packages(root)
    assert elf_machine(next((packages / "onnxruntime/capi").glob("onnxruntime_pybind11*.so"))) \
        == AARCH64
    assert elf_machine(next((packages / "systemd").glob("_daemon*.so"))) == AARCH64  # built here
    assert (root.root / "etc/systemd/system/multi-user.target.wants/edge-ocr.service").is_symlink()
    models = root.root / MODELS.lstrip("/")
    for relative, digest in copied_packs.items():
        assert sha256_of(models / relative) == digest, relative


def test_doctor_reports_neon_dot_product_and_the_variant_auto_runs(installed, broker):
    root, _ = installed
    configure(root, broker.port)
    config = ["--config", "/etc/edge-ocr/edge-ocr.yaml"]
    done = inside(root, "edge-ocr doctor", EDGE_OCR, "doctor", *config)
    print(done.stdout)
    lines = done.stdout.splitlines()
    cpu = next(line for line in lines if line.startswith(("ok    cpu:", "warn  cpu:")))
    assert cpu.startswith("ok    cpu: aarch64") and "NEON (asimd)" in cpu, cpu
    assert "dot product (asimddp)" in cpu and "int8 runs on the dot-product" in cpu, cpu
    assert any(l.startswith("ok    models: ppocr-v6-tiny verified") for l in lines)
    assert any(l.startswith("ok    broker: 127.0.0.1:") for l in lines)
    precision = next(line for line in lines if "precision:" in line)
    # the packs came from the x86 host with the host's measurement: it does not count here
    assert "ppocr-v6-tiny int8 on cpu, auto: default (measured on another machine)" in precision

    record_measurement(root, "ppocr-v6-tiny", this_machine(root), int8_ms=120.0)
    again = inside(root, "edge-ocr doctor", EDGE_OCR, "doctor", *config).stdout
    print(again)
    assert "ppocr-v6-tiny fp32 on cpu, auto: measured on this machine; fp32 det 100 ms" in again
    record_measurement(root, "ppocr-v6-tiny", this_machine(root), int8_ms=40.0)
    third = inside(root, "edge-ocr doctor", EDGE_OCR, "doctor", *config).stdout
    assert "ppocr-v6-tiny int8 on cpu, auto: measured on this machine" in third


@pytest.mark.parametrize("precision", ["int8", "fp32"])
@pytest.mark.parametrize("pack", PACKS)
def test_ocr_reads_rendered_text_with_boxes_on_it(installed, pack, precision):
    root, _ = installed
    folder = root.root / "root" / f"pages-{pack}-{precision}"
    folder.mkdir()
    pages = {}
    for seed in PAGE_SEEDS:
        pages[f"page{seed}.png"] = small_page(seed)
        cv2.imwrite(str(folder / f"page{seed}.png"), pages[f"page{seed}.png"].image)
    done = inside(root, f"edge-ocr ocr, {pack} {precision}, two pages", EDGE_OCR, "ocr",
                  f"/root/{folder.name}", "--pack", pack, "--precision",
                  precision, "--format", "jsonl", "--config", "/etc/edge-ocr/edge-ocr.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["image"] for r in records) == sorted(pages)
    hits = total = 0
    for record in records:
        page = pages[record["image"]]
        got = [line["text"] for line in record["lines"]]
        hits += sum(line.text in got for line in page.lines)
        total += len(page.lines)
        assert boxes_on_the_text(record["lines"], page) >= 1, record
    assert hits / total >= READ_FRACTION[pack], records


def boxes_on_the_text(lines: list[dict], page) -> int:
    """Each line read with a rendered line's exact text has its box on that line (IoU > 0.5);
    returns how many were checked."""
    matched = 0
    for line in lines:
        truth = next((g for g in page.lines if g.text == line["text"]), None)
        if truth is not None:
            iou = polygon_iou(np.array(line["box"], np.float32), np.array(truth.box, np.float32))
            assert iou > 0.5, (line, truth)
            matched += 1
    return matched


def test_daemon_publishes_schema_valid_results_and_exits_0_on_sigterm(installed, broker,
                                                                      tmp_path):
    root, _ = installed
    configure(root, broker.port)
    record_measurement(root, "ppocr-v6-tiny", this_machine(root), int8_ms=120.0)  # auto: fp32
    subscriber = Subscriber(broker.port)
    schema = json.loads((PROJECT / "edge/schemas/result.schema.json").read_text())
    daemon = root.start([EDGE_OCR, "run", "--config", "/etc/edge-ocr/edge-ocr.yaml"],
                        tmp_path / "daemon.log")
    try:
        started = time.monotonic()
        wait_for(lambda: any(m.json()["state"] == "online" for m in subscriber.on("status")),
                 900, "the daemon on arm64 to come online")
        record_step("daemon start to online", time.monotonic() - started)
        started = time.monotonic()
        for seed in PAGE_SEEDS:
            drop(root, f"spool{seed}.png", seed)
        wait_for(lambda: len(subscriber.results_by_item()) == len(PAGE_SEEDS), 900,
                 "results of the dropped images")
        record_step("two spool images to results", time.monotonic() - started)
        for seed in PAGE_SEEDS:
            body = subscriber.results_by_item()[f"spool{seed}.png"]
            jsonschema.validate(body, schema)
            assert body["models"]["pack"] == "ppocr-v6-tiny"
            assert body["models"]["variant"] == "fp32"  # what the measurement here chose
            expected = [line.text for line in small_page(seed).lines]
            assert sum(text in body["text"].splitlines() for text in expected) >= \
                len(expected) * READ_FRACTION["ppocr-v6-tiny"], body["text"]
        assert not any((root.root / spool(False).lstrip("/")).glob("spool*.png"))
        signal_inside(daemon, "edge-ocr run")
        assert daemon.wait(timeout=300) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        wait_for(lambda: subscriber.on("status")[-1].json()["state"] == "stopped", 30,
                 "the stopped status")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subscriber.close()


def drop(root: Arm64Root, name: str, seed: int, under_systemd: bool = False) -> None:
    """Write a rendered page beside the spool, then rename it in, as a producer would."""
    folder = root.root / spool(under_systemd).lstrip("/")
    staging = folder.parent / f".{name}"
    staging.write_bytes(cv2.imencode(".png", small_page(seed).image)[1].tobytes())
    os.rename(staging, folder / name)


# What qemu-user cannot do for a unit (systemd 252 as PID 1 under Debian bookworm's qemu-user
# 7.2), and nothing more: LoadCredential= fails at the CREDENTIALS step ("Failed to set up
# credentials: Invalid argument", exit 243; systemd's own sysusers and tmpfiles units fail the
# same way at boot) and PrivateIPC= at the NAMESPACE step ("Failed to set up IPC namespacing:
# Input/output error", exit 226). Every other setting of the shipped unit stays as it is:
# the system-call filter, MemoryDenyWriteExecute, ProtectSystem, ProcSubset and the rest.
EMULATION_DROPIN = "[Service]\nLoadCredential=\nPrivateIPC=no\n"


def test_boot_under_emulation_reaches_ready_reads_a_dropped_image_and_powers_off(
        installed, broker, tmp_path):
    root, _ = installed
    configure(root, broker.port, under_systemd=True)
    dropins = root.root / "etc/systemd/system/edge-ocr.service.d"
    dropins.mkdir(parents=True, exist_ok=True)
    # Emulation is ~100x slower: more time to load the models and to read a frame.
    (dropins / "test.conf").write_text("[Service]\nTimeoutStartSec=900\nWatchdogSec=600\n")
    subscriber = Subscriber(broker.port, "edge-ocr/arm64-test/#")
    started = time.monotonic()
    container = Booted(root, tmp_path / "console.log")
    try:
        wait_for(lambda: container.unit("edge-ocr.service", "ExecMainStatus")
                 .get("ExecMainStatus") == "243", 600, "the shipped unit's first start")
        record_step("boot to the unit's first start", time.monotonic() - started)
        journal = container.run("journalctl", "-u", "edge-ocr", "--no-pager").stdout
        assert "Failed to set up credentials: Invalid argument" in journal  # qemu-user's gap

        (dropins / "emulation.conf").write_text(EMULATION_DROPIN)
        container.run("systemctl", "daemon-reload")
        container.run("systemctl", "restart", "--no-block", "edge-ocr.service")
        started = time.monotonic()
        wait_for(lambda: any(m.json()["state"] == "online" for m in subscriber.on("status")),
                 900, "the service to come online under systemd")
        record_step("unit start to READY under systemd", time.monotonic() - started)
        state = container.unit("edge-ocr.service", "ActiveState", "SubState", "Type", "User")
        assert state == {"ActiveState": "active", "SubState": "running", "Type": "notify",
                         "User": "edge-ocr"}

        started = time.monotonic()
        drop(root, "after-boot.png", PAGE_SEEDS[0], under_systemd=True)
        wait_for(lambda: "after-boot.png" in subscriber.results_by_item(), 900, "a result")
        record_step("a dropped image to its result under systemd", time.monotonic() - started)
        body = subscriber.results_by_item()["after-boot.png"]
        jsonschema.validate(body, json.loads(
            (PROJECT / "edge/schemas/result.schema.json").read_text()))
        assert any(line.text in body["text"].splitlines()
                   for line in small_page(PAGE_SEEDS[0]).lines), body["text"]
        journal = container.run("journalctl", "-u", "edge-ocr", "-o", "json", "--no-pager").stdout
        assert '"SOURCE":"folder:/var/spool/edge-ocr"' in journal and '"FRAME_ID":' in journal

        assert container.poweroff() == 0
        assert subscriber.on("status")[-1].json()["state"] == "stopped"
    finally:
        container.kill()
        subscriber.close()
