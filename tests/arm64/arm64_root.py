"""An arm64 Debian root on this x86 machine: qemu-user through binfmt_misc, debootstrap, nspawn.

The debootstrapped root is built once and cached in ~/.cache/edge-ocr/arm64-test/rootfs-KEY,
KEY a hash of everything that goes into it (suite, mirror, variant, packages, this recipe's
version); each test module works in a fresh copy. Downloads inside the root (apt, pip) go
through caches bound in from the same folder, so a second run fetches nothing.

ONNX Runtime's CPU detection reads /sys/devices/system/cpu and crashes under qemu-user when it
finds the x86 host's there; every command runs with a folder that holds only `present`,
`possible` and `online` mounted over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-ocr" / "arm64-test"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a fresh Raspberry Pi OS Lite (64-bit) has that the installer relies on, plus systemd and
# dbus for the boot test; the installer adds its build tools itself.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "ca-certificates", "python3",
            "python3-venv")
RECIPE = 1
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
TIMINGS = CACHE / "timings.log"


def record_step(name: str, seconds: float) -> None:
    """Note how long an arm64 step took, in CACHE/timings.log and on the terminal."""
    CACHE.mkdir(parents=True, exist_ok=True)
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {seconds:.0f} s"
    with TIMINGS.open("a") as log:
        log.write(line + "\n")
    print(f"\narm64 step {line}")


def ensure_binfmt() -> None:
    """Register qemu-aarch64 with binfmt_misc (flag F: the interpreter is opened now, so it
    works inside containers) unless it is registered already."""
    handler = BINFMT / "qemu-aarch64"
    if handler.exists() and "enabled" in handler.read_text():
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if handler.exists():
        handler.write_text("1")
        return
    (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())


def cache_key() -> str:
    """A hash of what goes into the cached root."""
    recipe = {"suite": SUITE, "mirror": MIRROR, "arch": "arm64", "variant": "minbase",
              "packages": sorted(PACKAGES), "recipe": RECIPE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_root() -> Path:
    """The debootstrapped arm64 root, built once."""
    ensure_binfmt()
    rootfs = CACHE / f"rootfs-{cache_key()}"
    if (rootfs / "usr" / "bin" / "python3").exists():
        return rootfs
    staging = rootfs.with_name(rootfs.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                    f"--include={','.join(PACKAGES)}", SUITE, str(staging), MIRROR],
                   check=True, stdout=subprocess.DEVNULL)
    os.rename(staging, rootfs)
    record_step("debootstrap (arm64 root, cached)", time.monotonic() - started)
    for stale in CACHE.glob("rootfs-*"):  # roots built from an older recipe
        if stale != rootfs:
            shutil.rmtree(stale, ignore_errors=True)
    return rootfs


def fake_cpu_folder(where: Path, cores: int = 2) -> Path:
    """/sys/devices/system/cpu as far as ONNX Runtime needs it: `cores` online CPUs."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("present", "possible", "online"):
        (where / name).write_text(f"0-{cores - 1}\n")
    return where


class Arm64Root:
    """A copy of the cached root, and commands run inside it with systemd-nspawn."""

    def __init__(self, root: Path, cpu: Path) -> None:
        self.root = root
        self.cpu = cpu

    @classmethod
    def copy_of_base(cls, where: Path) -> "Arm64Root":
        """A fresh copy of the cached root in `where`."""
        root = where / "rootfs"
        started = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", str(base_root()), str(root)], check=True)
        record_step("copy of the cached root", time.monotonic() - started)
        return cls(root, fake_cpu_folder(where / "cpu"))

    def nspawn(self, *options: str) -> list[str]:
        """The systemd-nspawn command line for this root, before the command."""
        caches = {CACHE / "pip": "/root/.cache/pip", CACHE / "apt": "/var/cache/apt/archives"}
        binds = []
        for host, inside in caches.items():
            host.mkdir(parents=True, exist_ok=True)
            binds.append(f"--bind={host}:{inside}")
        return ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(self.root),
                f"--bind={self.cpu}:/sys/devices/system/cpu", *binds, *host_network_settings(),
                *options]

    def run(self, command: Sequence[str], timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run a command inside and wait for it."""
        settings = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
        return subprocess.run([*self.nspawn(*settings, "--pipe"), *command],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, command: Sequence[str], log: Path) -> subprocess.Popen:
        """Start a command inside, its output going to `log`."""
        with open(log, "wb") as out:
            return subprocess.Popen([*self.nspawn("--pipe"), *command], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)


def host_network_settings() -> list[str]:
    """The host's package-index and CA settings, so that installers inside reach the same
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


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (host pids)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def signal_inside(process: subprocess.Popen, marker: str, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to the process started inside whose command line holds `marker`."""
    for pid in descendants(process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            os.kill(pid, sig)
            return pid
    raise AssertionError(f"no process with {marker!r} under {process.pid}")


def elf_machine(path: Path) -> int:
    """The e_machine field of an ELF file (183: aarch64, 62: x86-64)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


class Booted:
    """The root booted with systemd as PID 1 (`systemd-nspawn -b`), and commands run in it."""

    def __init__(self, root: Arm64Root, log: Path) -> None:
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [*root.nspawn("-M", "edge-arm64-test", "-b", "--console=passive")],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        self.leader = 0
        while not self.leader and time.monotonic() < deadline:
            children = descendants(self.process.pid)
            self.leader = children[0] if children else 0
            time.sleep(0.5)
        assert self.leader, "the container's init did not start"

    def run(self, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A command in the booted container's namespaces."""
        return subprocess.run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p",
                               *command], capture_output=True, text=True, timeout=timeout)

    def unit(self, name: str, *properties: str) -> dict[str, str]:
        """Properties of a unit, as `systemctl show` gives them."""
        shown = self.run("systemctl", "show", name, *(f"-p{p}" for p in properties))
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 300) -> int:
        """Shut down cleanly; nspawn's exit status."""
        self.run("systemctl", "poweroff")
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Stop the container if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
