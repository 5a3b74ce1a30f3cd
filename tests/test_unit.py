"""The systemd unit as systemd itself reads it: `verify` clean, `security` exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edge-ocr.service"
INSTALLED_BINARY = "/opt/edge-ocr/venv/bin/edge-ocr"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed")


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's edge-ocr (verify wants it to exist)."""
    copy = tmp_path / "edge-ocr.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY,
                                             str(Path(sys.executable).with_name("edge-ocr"))))
    return copy


def test_unit_verifies_without_errors(tmp_path):
    assert INSTALLED_BINARY in UNIT.read_text()
    done = subprocess.run(["systemd-analyze", "verify", "--recursive-errors=yes",
                           str(unit_copy(tmp_path))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "edge-ocr.service" not in done.stderr, done.stderr


def test_unit_security_exposure_is_at_most_2(tmp_path):
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(unit_copy(tmp_path))], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for edge-ocr.service: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout
