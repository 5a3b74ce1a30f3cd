"""`edge-ocr doctor`: one line per check, against a real broker and real files."""

from __future__ import annotations

import numpy as np

from conftest import run_cli
from daemon_kit import Broker
from edge.cli.doctor import check_memory_controller, check_region
from edge.config import CameraSource, EdgeConfig


def test_doctor_checks_broker_spool_and_models_one_line_each(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    try:
        config = tmp_path / "edge.yaml"
        config.write_text(f"sources:\n  folders:\n    - path: {tmp_path / 'missing'}\n"
                          f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n"
                          f"paths:\n  state_dir: {tmp_path / 'state'}\n")
        done = run_cli("doctor", "--config", str(config))
        lines = done.stdout.splitlines()
        assert done.returncode == 1
        assert any(l.startswith("ok    models: ppocr-v6-small verified") for l in lines)
        assert any(l.startswith("ok    broker: 127.0.0.1:") for l in lines)
        assert any(l.startswith(f"fail  spool: {tmp_path / 'missing'} does not exist") for l in lines)
        assert any(l.startswith(("ok    cpu:", "warn  cpu:")) for l in lines)
        broker.stop()
        again = run_cli("doctor", "--config", str(config))
        assert "fail  broker: cannot reach 127.0.0.1:" in again.stdout
    finally:
        broker.stop()


def test_memory_controller_off_is_reported_with_the_kernel_option(tmp_path):
    controllers = tmp_path / "cgroup.controllers"
    controllers.write_text("cpuset cpu io pids\n")
    finding = check_memory_controller(EdgeConfig(), controllers)
    assert finding.level == "warn" and "cgroup_enable=memory" in finding.fix
    controllers.write_text("cpuset cpu io memory pids\n")
    assert check_memory_controller(EdgeConfig(), controllers).level == "ok"


def test_memory_controller_on_cgroup_v1_is_read_from_proc_cgroups(tmp_path):
    cgroups = tmp_path / "cgroups"
    cgroups.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                       "cpu\t2\t1\t1\nmemory\t0\t1\t0\n")
    missing = tmp_path / "no-such-file"
    assert check_memory_controller(EdgeConfig(), missing, cgroups).level == "warn"
    cgroups.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t1\t1\n")
    assert check_memory_controller(EdgeConfig(), missing, cgroups).level == "ok"


def test_doctor_and_check_config_say_what_the_ram_budget_costs(tmp_path):
    config = tmp_path / "pi.yaml"
    config.write_text("ocr:\n  pack: ppocr-v6-tiny\n  charset: latin\n"
                      "images:\n  max_side: 1700\n  grey: true\n"
                      f"resources:\n  memory_mb: 160\npaths:\n  state_dir: {tmp_path / 'state'}\n")
    doctor = run_cli("doctor", "--config", str(config)).stdout.splitlines()
    plan = next(line for line in doctor if line.startswith("ok    RAM plan: budget 160 MB"))
    assert "images decoded to " in plan and "an A4 page at 300 dpi is decoded at" in plan
    assert "RAM plan: budget 160 MB" in run_cli("check-config", str(config)).stdout
    auto = tmp_path / "auto.yaml"
    auto.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\n")
    assert "ok    RAM: no budget (auto): an image is decoded only if it fits in" in \
        run_cli("doctor", "--config", str(auto)).stdout


def test_camera_region_is_fitted_to_the_frame_the_camera_delivers():
    frame = np.zeros((720, 1280, 3), np.uint8)
    reaching = CameraSource(name="gate", url=0, region={"x": 1100, "y": 600, "width": 400,
                                                        "height": 200})
    finding = check_region(reaching, frame)
    assert finding.level == "ok"
    assert finding.seen == "180x120 pixels at 1100,600 of its 1280x720 frame are read"  # clipped
    missing = CameraSource(name="gate", url=0, region={"polygon": [[1300, 10], [1500, 10],
                                                                   [1400, 200]]})
    finding = check_region(missing, frame)
    assert finding.level == "fail" and "outside its 1280x720 frame" in finding.seen
