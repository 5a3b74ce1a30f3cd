"""A real boot: Debian bookworm under systemd-nspawn, edge-ocr installed by scripts/install.sh.

Marked `boot` (not in the default run): `.ci/run` runs it as root where systemd-nspawn and
debootstrap are available. The debootstrapped root is built once and cached in
~/.cache/edge-ocr/boot-test; each run installs into a fresh copy of it. The container shares
the host's network, so the daemon inside reaches the Mosquitto this test runs on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from daemon_kit import Broker, Subscriber, wait_for
from edge.config import load_config
from edge.models.calibration import render_page

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-nspawn")
                       or not shutil.which("debootstrap"),
                       reason="needs root, systemd-nspawn and debootstrap"),
]

PROJECT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-ocr" / "boot-test"
PACKAGES = "systemd,systemd-sysv,dbus,procps,ca-certificates,python3,python3-venv,python3-dev," \
           "gcc,pkg-config,libsystemd-dev"
MACHINE = "edge-boot-test"


def base_rootfs() -> Path:
    """A debootstrapped bookworm with what the installer needs, built once."""
    rootfs = CACHE / "rootfs"
    if not (rootfs / "usr" / "lib" / "systemd" / "systemd").exists():
        shutil.rmtree(CACHE / "rootfs.tmp", ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                        str(CACHE / "rootfs.tmp"), "http://deb.debian.org/debian"],
                       check=True, stdout=subprocess.DEVNULL)
        os.rename(CACHE / "rootfs.tmp", rootfs)
    return rootfs


class Container:
    """One booted container and a way to run commands inside it."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-M", MACHINE,
             "-D", str(root), "-b", "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.leader = int(wait_for(self._leader, 60, "the container's init"))

    def _leader(self) -> int | None:
        done = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                              text=True)
        return int(done.stdout.split()[0]) if done.stdout.split() else None

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p",
                               *command], capture_output=True, text=True, timeout=60)

    def unit(self, *properties: str) -> dict[str, str]:
        shown = self.run("systemctl", "show", "edge-ocr.service", *(f"-p{p}" for p in properties))
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def daemon_pid(self) -> int:
        return int(self.unit("MainPID")["MainPID"])

    def poweroff(self, timeout: float = 60) -> int:
        self.run("systemctl", "poweroff")
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A copy of the cached root with edge-ocr installed by scripts/install.sh (not booted)."""
    root = tmp_path_factory.mktemp("boot") / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base_rootfs()), str(root)], check=True)
    source = root / "root" / "edge-ocr"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache"))
    pip_cache = Path.home() / ".cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(root),
         f"--bind={pip_cache}:/root/.cache/pip", *_host_network_settings(), "--pipe",
         "/root/edge-ocr/scripts/install.sh"],
        capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-ocr.service").is_symlink()
    return root


def _host_network_settings() -> list[str]:
    """The host's package-index and CA settings, so the installer inside reaches the same
    registries the host does (through the same TLS-inspecting proxy, where there is one)."""
    options = []
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_INDEX_URL",
                 "PIP_DEFAULT_TIMEOUT", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        value = os.environ.get(name)
        if value:
            options.append(f"--setenv={name}={value}")
            if os.path.isfile(value):
                options.append(f"--bind-ro={value}")
    return options


def configure(root: Path, broker_port: int) -> None:
    config = root / "etc/edge-ocr/edge-ocr.yaml"
    config.write_text(
        "device_id: boot-test\n"
        "sources:\n  folders:\n    - path: /var/spool/edge-ocr\n      settle_seconds: 0.5\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n"
        "health:\n  interval_seconds: 2\n")
    dropin = root / "etc/systemd/system/edge-ocr.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    # Shorter than in the field so the test does not wait minutes for the watchdog.
    (dropin / "test.conf").write_text("[Service]\nWatchdogSec=10\nTimeoutAbortSec=5\nRestartSec=2\n")


def drop(root: Path, name: str, seed: int) -> None:
    staging = root / "var/spool" / f".{name}"
    staging.write_bytes(cv2.imencode(".jpg", render_page(seed, lines=4).image)[1].tobytes())
    os.rename(staging, root / "var/spool/edge-ocr" / name)


def test_boot_ready_result_watchdog_restart_bad_config_poweroff_uninstall(installed, tmp_path):
    written = load_config(installed / "etc/edge-ocr/edge-ocr.yaml")
    assert written.models.dir == Path("/var/lib/edge-ocr/models")  # for doctor, models list
    broker = Broker(tmp_path / "broker").start()
    configure(installed, broker.port)
    subscriber = Subscriber(broker.port)
    container = Container(installed, tmp_path / "console.log")
    try:
        wait_for(lambda: any(m.json()["state"] == "online" for m in subscriber.on("status")),
                 300, "the service to come online after boot")
        state = container.unit("ActiveState", "SubState", "Type")
        assert state == {"ActiveState": "active", "SubState": "running", "Type": "notify"}

        drop(installed, "after-boot.jpg", 1)
        wait_for(lambda: "after-boot.jpg" in subscriber.results_by_item(), 120, "a result")
        journal = container.run("journalctl", "-u", "edge-ocr", "-o", "json", "--no-pager").stdout
        assert '"SOURCE":"folder:/var/spool/edge-ocr"' in journal and '"FRAME_ID":' in journal

        stuck = container.daemon_pid()
        os.kill(_host_pid(stuck, container), signal.SIGSTOP)
        drop(installed, "while-stuck.jpg", 2)
        wait_for(lambda: container.daemon_pid() not in (0, stuck), 120,
                 "systemd to restart the stuck daemon")
        assert int(container.unit("NRestarts")["NRestarts"]) >= 1
        wait_for(lambda: "while-stuck.jpg" in subscriber.results_by_item(), 300,
                 "the image dropped while the daemon was stuck")

        (installed / "etc/edge-ocr/edge-ocr.yaml").write_text("mqtt:\n  port: not-a-port\n")
        container.run("systemctl", "restart", "edge-ocr.service")
        wait_for(lambda: container.unit("ActiveState")["ActiveState"] == "failed", 60,
                 "the unit to fail on a bad config")
        restarts = container.unit("NRestarts", "ExecMainStatus")
        time.sleep(10)
        assert container.unit("ActiveState")["ActiveState"] == "failed"
        assert container.unit("NRestarts")["NRestarts"] == restarts["NRestarts"]
        assert restarts["ExecMainStatus"] == "78"

        assert container.poweroff() == 0
        removed = subprocess.run(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(installed),
             "--pipe", "/root/edge-ocr/scripts/install.sh", "--uninstall"],
            capture_output=True, text=True, timeout=300)
        assert removed.returncode == 0, removed.stderr
        assert not (installed / "opt/edge-ocr").exists()
        assert not (installed / "etc/systemd/system/edge-ocr.service").exists()
        assert (installed / "etc/edge-ocr/edge-ocr.yaml").exists()  # data is kept
        assert (installed / "var/lib/edge-ocr/outbox.db").exists()
    finally:
        container.kill()
        subscriber.close()
        broker.stop()


def _host_pid(container_pid: int, container: Container) -> int:
    """The host's pid of a process that the container calls `container_pid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and int(ids[-1]) == container_pid and _in_container(entry, container):
                    return int(entry.name)
    raise AssertionError(f"no host process for container pid {container_pid}")


def _in_container(proc: Path, container: Container) -> bool:
    try:
        return os.readlink(proc / "ns" / "pid") == os.readlink(
            Path(f"/proc/{container.leader}") / "ns" / "pid")
    except OSError:
        return False
