"""32-bit Raspberry Pi OS has no ONNX Runtime wheels: setup.sh and install.sh refuse it before
installing anything, naming the 64-bit OS. Runs in the default suite, on any machine: the system's
answers (dpkg, uname, getconf) come from stand-ins first on PATH, and every command that would
change the machine is a stand-in that fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
CHANGERS = ("apt-get", "useradd", "groupadd", "systemctl", "pip", "python3")


def stand_ins(folder: Path, userland: str, machine: str, bits: int) -> Path:
    folder.mkdir()
    answers = {"dpkg": userland, "uname": machine, "getconf": str(bits)}
    for name, answer in answers.items():
        (folder / name).write_text(f"#!/bin/sh\necho {answer}\n")
    for name in CHANGERS:
        (folder / name).write_text(f"#!/bin/sh\necho 'stand-in {name} called' >&2\nexit 99\n")
    for script in folder.iterdir():
        script.chmod(0o755)
    return folder


def copy_of_scripts(where: Path) -> Path:
    """The scripts alone in a scratch tree: a script that failed to refuse finds nothing to
    install."""
    shutil.copytree(PROJECT / "scripts", where / "scripts")
    return where


@pytest.mark.parametrize("userland,machine,bits", [
    ("armhf", "armv7l", 32),   # 32-bit Raspberry Pi OS on a 32-bit kernel (Pi 2, 3)
    ("armhf", "aarch64", 32),  # 32-bit Raspberry Pi OS on its 64-bit kernel (Pi 4, 5)
])
@pytest.mark.parametrize("script", ["setup.sh", "install.sh"])
def test_32_bit_arm_is_refused_before_anything_is_installed(tmp_path, script, userland,
                                                            machine, bits):
    tree = copy_of_scripts(tmp_path / "tree")
    path = stand_ins(tmp_path / "bin", userland, machine, bits)
    done = subprocess.run(["bash", str(tree / "scripts" / script)], capture_output=True,
                          text=True, env=dict(os.environ, PATH=f"{path}:{os.environ['PATH']}"),
                          timeout=60)
    assert done.returncode == 1
    assert "32-bit Arm system (armhf" in done.stderr
    assert "Install Raspberry Pi OS (64-bit)" in done.stderr
    assert "stand-in" not in done.stderr and not (tree / ".venv").exists()


def test_64_bit_systems_pass_silently(tmp_path):
    for n, (userland, machine) in enumerate((("arm64", "aarch64"), ("amd64", "x86_64"))):
        path = stand_ins(tmp_path / f"bin{n}", userland, machine, 64)
        done = subprocess.run(["bash", str(PROJECT / "scripts/check-platform.sh")],
                              capture_output=True, text=True,
                              env=dict(os.environ, PATH=f"{path}:{os.environ['PATH']}"))
        assert (done.returncode, done.stderr) == (0, "")
