"""Nothing lost, nothing stuck, nothing hot: long names, full disks, crash loops, slow writers.

Each test runs the real daemon as a child process against a real Mosquitto. A full disk is a
small tmpfs that the test mounts (root only) and fills.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import jsonschema
import pytest

from daemon_kit import Daemon, Subscriber, wait_for
from edge.models.calibration import render_page
from edge.sources import folder  # noqa: F401  (installs the filter on watchdog's logger)

TICKS = os.sysconf("SC_CLK_TCK")
SCHEMAS = Path(__file__).resolve().parents[1] / "edge" / "schemas"
HEALTH_SCHEMA = json.loads((SCHEMAS / "health.schema.json").read_text())


def jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", render_page(seed, lines=3, width=480, height=320).image,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, mounted for the test; yields a callable that fills it (and the filler)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system for a full disk needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no block left; returns it (delete it to free space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def outbox_depth(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def health(subscriber: Subscriber) -> dict:
    messages = subscriber.on("health")
    return messages[-1].json() if messages else {}


def test_file_names_up_to_the_longest_the_file_system_allows_are_read_and_reported(
        broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    names = ["r" * 236 + ".jpg", "s" * 251 + ".jpg", "ü" * 125 + "t.jpg"]  # 240-255 bytes
    for seed, name in enumerate(names):
        daemon.drop(name, jpeg(40 + seed))
    broken = "b" * 250 + ".png"
    daemon.drop(broken, b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    wait_for(lambda: set(subscriber.results_by_item()) == set(names), 60, "three results")
    errors = wait_for(lambda: subscriber.on("errors"), 30, "the broken file's error")
    assert errors[0].json()["source"]["item"] == broken
    wait_for(lambda: not daemon.spool_files(), 10, "the spool and its claim folder to empty")
    failed = daemon.state / "failed"
    sidecars = [json.loads(p.read_text()) for p in failed.glob("*.error.json")]
    assert [s["name"] for s in sidecars] == [broken]
    assert len(os.listdir(failed)) == 2
    assert daemon.terminate()[0] == 0


def test_retry_failed_brings_a_long_named_file_back_under_its_own_name(broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    broken = "c" * 251 + ".jpg"
    daemon.drop(broken, b"\xff\xd8\xff\xd9")
    wait_for(lambda: subscriber.on("errors"), 30, "the error")
    wait_for(lambda: not daemon.spool_files(), 10, "the file filed as failed")
    subscriber.publish("edge-ocr/test-box/cmd/retry-failed", b"", response_topic="replies/t")
    wait_for(lambda: len(subscriber.on("errors")) == 2, 30, "the file read again")
    assert {m.json()["source"]["item"] for m in subscriber.on("errors")} == {broken}


def test_a_full_state_disk_pauses_intake_without_a_hot_loop_and_resumes_by_itself(
        broker, run_daemon, small_disk):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port, paths={"state_dir": str(small_disk / "state")})
    daemon.wait_ready(subscriber)
    filler = fill(small_disk)
    names = [f"receipt-{i}.jpg" for i in range(3)]
    for i, name in enumerate(names):
        daemon.drop(name, jpeg(60 + i))
    daemon.drop("broken.jpg", b"\xff\xd8\xff\xd9")
    wait_for(lambda: health(subscriber).get("intake", {}).get("state") == "paused", 60,
             "health to say intake is paused")
    assert health(subscriber)["intake"]["reason"] == "disk_full"
    jsonschema.validate(health(subscriber), HEALTH_SCHEMA)
    cpu_before = cpu_seconds(daemon.process.pid)
    time.sleep(10)
    assert cpu_seconds(daemon.process.pid) - cpu_before < 2.5, "the daemon spins on a full disk"
    log = daemon.log_text()
    assert log.count("intake paused") <= 2, log
    assert subscriber.results_by_item() == {} and health(subscriber)["failed"] == 0
    assert not (small_disk / "state" / "failed").exists() or \
        not os.listdir(small_disk / "state" / "failed")
    filler.unlink()
    wait_for(lambda: set(subscriber.results_by_item()) == set(names), 90,
             "every result once there is room again")
    wait_for(lambda: subscriber.on("errors"), 30, "the broken file's error")
    wait_for(lambda: not daemon.spool_files(), 20, "the spool and its claim folder to empty")
    assert [p.name for p in (small_disk / "state" / "failed").glob("*.error.json")] == \
        ["broken.jpg.error.json"]
    wait_for(lambda: health(subscriber).get("intake", {}).get("state") == "open", 20,
             "health to say intake is open again")
    assert daemon.terminate()[0] == 0


def test_acknowledgements_on_a_full_disk_still_empty_the_outbox_and_nothing_is_sent_twice(
        broker, run_daemon, small_disk):
    broker.stop()
    daemon = run_daemon(broker.port, paths={"state_dir": str(small_disk / "state")})
    names = [f"scan-{i}.jpg" for i in range(8)]
    for i, name in enumerate(names):
        daemon.drop(name, jpeg(80 + i))
    outbox = small_disk / "state" / "outbox.db"
    wait_for(lambda: outbox.exists() and outbox_depth(outbox) == 8, 120, "8 results queued")
    wait_for(lambda: not daemon.spool_files(), 10, "the spool to empty")
    filler = fill(small_disk)
    broker.start()
    subscriber = Subscriber(broker.port)  # subscribed before the daemon's next reconnect try
    wait_for(lambda: set(subscriber.results_by_item()) == set(names), 90, "all 8 results")
    wait_for(lambda: outbox_depth(outbox) == 0, 30, "the outbox to empty on a full disk")
    filler.unlink()
    wal = outbox.with_name("outbox.db-wal")
    assert not wal.exists() or wal.stat().st_size <= 512 * 1024
    assert daemon.terminate()[0] == 0
    before = len(subscriber.on("results"))
    restarted = Daemon(daemon.root, broker.port, {"paths": {"state_dir": str(small_disk / "state")}}
                       ).start()
    wait_for(lambda: len([m for m in subscriber.on("status")
                          if m.json()["state"] == "online"]) >= 2, 60, "the restart")
    time.sleep(3)
    assert len(subscriber.on("results")) == before, "acknowledged results were sent again"
    assert restarted.terminate()[0] == 0
    subscriber.close()


def test_a_crash_loop_counts_an_attempt_only_for_the_file_being_read(broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    names = [f"receipt-{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        daemon.drop(name, jpeg(120 + i))
    for crash in range(4):
        wait_for(lambda: len([m for m in subscriber.on("status")
                              if m.json()["state"] == "online"]) > crash, 60, "READY")
        if crash == 0:  # later starts find them claimed already
            work = daemon.spool / ".edge-ocr"
            wait_for(lambda: work.exists() and len(os.listdir(work)) >= 3, 30, "files claimed")
        daemon.kill()
        daemon = Daemon(daemon.root, daemon.port, {}).start()
    try:
        wait_for(lambda: len(subscriber.results_by_item()) + len(subscriber.on("errors")) >= 6,
                 120, "every file read or refused")
        interrupted = [m.json()["source"]["item"] for m in subscriber.on("errors")]
        assert len(interrupted) <= 1, interrupted  # at most the one read at every crash
        assert set(subscriber.results_by_item()) | set(interrupted) == set(names)
        # the files may all have been read before the last crash: stop the last start only
        # once it is up (a SIGTERM while the models load ends it by the signal's default)
        wait_for(lambda: len([m for m in subscriber.on("status")
                              if m.json()["state"] == "online"]) > 4, 60, "the last start")
        assert daemon.terminate()[0] == 0
    finally:
        if daemon.alive():
            daemon.kill()


def test_a_file_written_in_pieces_is_read_once_whole(tmp_path, broker, run_daemon):
    subscriber = Subscriber(broker.port)
    spool = tmp_path / "daemon0" / "spool"
    daemon = run_daemon(broker.port, sources={"folders": [{"path": str(spool),
                                                        "settle_seconds": 30}]})
    daemon.wait_ready(subscriber)
    data = jpeg(140)
    target = daemon.spool / "slow-scanner.jpg"
    piece = len(data) // 10 + 1
    for start in range(0, len(data), piece):
        with open(target, "ab") as handle:  # each piece ends with a close-write event
            handle.write(data[start:start + piece])
        time.sleep(0.4)
    # whole once its last piece is written: taken on that close, long before 30 s of settling
    wait_for(lambda: subscriber.results_by_item(), 20, "the result")
    time.sleep(3)
    assert list(subscriber.results_by_item()) == ["slow-scanner.jpg"]
    assert "Traceback" not in daemon.log_text()
    assert len(subscriber.on("results")) == 1 and subscriber.on("errors") == []
    assert not (daemon.state / "failed").exists() or not os.listdir(daemon.state / "failed")


def test_shutdown_is_logged_as_such_and_a_wildcard_response_topic_gets_an_error_reply(
        broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    subscriber.publish("edge-ocr/test-box/cmd/status", b"", response_topic="replies/#",
                       correlation=b"wild")
    reply = wait_for(lambda: subscriber.on("replies"), 10, "an error reply on replies")[0]
    plan = wait_for(lambda: health(subscriber), 10, "health")["memory"]["plan"]
    assert plan.startswith("auto: images decoded up to "), plan  # the default guards the box
    assert reply.json()["ok"] is False and reply.correlation == b"wild"
    assert "response topic" in reply.json()["error"]["message"]
    assert daemon.terminate()[0] == 0
    log = daemon.log_text()
    assert "disconnected (shutdown)" in log
    assert "reconnecting" not in log and "ERROR" not in log, log


def test_watchdogs_stop_race_line_is_not_passed_on(caplog):
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("watchdog.observers.inotify").error(
            "InotifyEmitter.queue_events() called when the thread is inactive")
        logging.getLogger("watchdog.observers.inotify").error("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_the_readmes_command_line_request_gets_its_reply(tmp_path, broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(150))
    port = str(broker.port)
    waiting = subprocess.Popen(["mosquitto_sub", "-p", port, "-t", "replies/me", "-C", "1",
                                "-V", "5", "-W", "60"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)  # subscribed before the request goes out
    subprocess.run(["mosquitto_pub", "-p", port, "-t", "edge-ocr/test-box/cmd/ocr", "-f",
                    str(photo), "-V", "5", "-D", "publish", "response-topic", "replies/me"],
                   check=True, timeout=10)
    reply = json.loads(waiting.communicate(timeout=70)[0])
    assert reply["ok"] is True and reply["result"]["lines"], reply
