"""`edge-ocr run` end to end: real spool folders, real models, a real Mosquitto, a real daemon."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from daemon_kit import Daemon, Subscriber, wait_for
from edge.models.calibration import render_page

SCHEMAS = Path(__file__).resolve().parents[1] / "edge" / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def jpeg(seed: int, **size) -> bytes:
    return cv2.imencode(".jpg", render_page(seed, lines=5, **size).image,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_dropped_images_arrive_as_valid_results_and_the_spool_empties(broker, run_daemon,
                                                                      protocol):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port, mqtt={"protocol": protocol})
    daemon.wait_ready(subscriber)
    pages = {f"page-{seed}.jpg": render_page(seed, lines=5) for seed in (21, 22, 23)}
    for name, page in pages.items():
        daemon.drop(name, cv2.imencode(".jpg", page.image)[1].tobytes())
    results = wait_for(lambda: len(subscriber.results_by_item()) == 3 and
                       subscriber.results_by_item(), 60, "three results")
    for name, page in pages.items():
        body = results[name]
        jsonschema.validate(body, schema("result"))
        read = {line["text"] for line in body["lines"]}
        expected = {line.text for line in page.lines}
        assert len(read & expected) >= 3, (read, expected)
        assert body["image"] == {"width": 960, "height": 720, "decoded_scale": 1.0}
        assert body["source"] == {"type": "folder", "name": str(daemon.spool), "item": name}
    wait_for(lambda: not daemon.spool_files(), 10, "the spool to empty")
    assert sorted(r["seq"] for r in results.values()) == sorted(set(r["seq"] for r in results.values()))
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 10
    assert os.listdir(daemon.runtime) == []
    assert subscriber.on("status")[-1].json()["state"] == "stopped"


def test_broker_down_for_twenty_files_then_all_arrive_in_order(tmp_path, broker, run_daemon):
    subscriber = Subscriber(broker.port, client_id="durable-sub", persistent=True)
    broker.stop()  # the subscriber's session survives in the broker's persistence file
    daemon = run_daemon(broker.port)
    names = [f"scan-{i:02d}.jpg" for i in range(20)]
    for i, name in enumerate(names):
        daemon.drop(name, jpeg(100 + i, width=480, height=320))
    outbox = daemon.state / "outbox.db"
    wait_for(lambda: outbox.exists() and _outbox_depth(outbox) == 20, 120,
             "20 results queued in the outbox while the broker is down")
    assert daemon.spool_files() == []
    broker.start()
    wait_for(lambda: len(subscriber.results_by_item()) == 20, 60, "all 20 after reconnect")
    firsts = list(subscriber.results_by_item().values())
    assert [body["source"]["item"] for body in firsts] == names
    seqs = [body["seq"] for body in firsts]
    assert seqs == sorted(seqs)
    assert len({body["id"] for body in firsts}) == 20
    wait_for(lambda: _outbox_depth(outbox) == 0, 20, "the outbox to empty once acknowledged")
    subscriber.close()


def test_kill_9_mid_run_loses_nothing(broker, run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    names = [f"doc {i}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        daemon.drop(name, jpeg(300 + i))
    wait_for(lambda: len(subscriber.results_by_item()) >= 3, 60, "the first results")
    daemon.kill()
    assert len(subscriber.results_by_item()) < 12, "killed too late to prove anything"
    restarted = Daemon(daemon.root, daemon.port, {}).start()
    try:
        wait_for(lambda: len(subscriber.results_by_item()) == 12, 120, "every file's result")
        wait_for(lambda: not restarted.spool_files(), 10, "the spool to empty")
        assert os.listdir(restarted.runtime) == []
        assert set(subscriber.results_by_item()) == set(names)
        assert restarted.terminate()[0] == 0
    finally:
        if restarted.alive():
            restarted.kill()


def _outbox_depth(path: Path) -> int:
    """Messages waiting in the outbox; 0 while the daemon has created the file but not yet its
    table."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone() is None:
            return 0
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


# --- bad inputs -------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
            struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


def jpeg_header(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\x00" * 64 + b"\xff\xd9"


def bad_corpus(spool: Path, outside: Path) -> dict[str, str]:
    """Write every bad input into `spool`; returns name -> expected outcome."""
    good = jpeg(41)
    expected = {}

    def write(name, data, outcome):
        (spool / name).write_bytes(data)
        expected[name] = outcome

    write("empty.jpg", b"", "image_unreadable")
    write("truncated.jpg", good[: len(good) // 2], "image_unreadable")
    write("notes.jpg", b"this is a text file, not a picture\n" * 20, "image_unreadable")
    write("bomb.png", png_header(60000, 60000), "image_too_large")
    write("bomb.jpg", jpeg_header(60000, 60000), "image_too_large")
    panorama = np.full((300, 20000, 3), 255, np.uint8)
    cv2.putText(panorama, "PANORAMA 2026", (50, 200), cv2.FONT_HERSHEY_SIMPLEX, 4, (0, 0, 0), 8)
    write("panorama.jpg", cv2.imencode(".jpg", panorama)[1].tobytes(), "result")
    (outside / "secret.jpg").write_bytes(good)
    os.symlink(outside / "secret.jpg", spool / "link.jpg")
    expected["link.jpg"] = "spool_refused"
    os.mkfifo(spool / "pipe.jpg")
    expected["pipe.jpg"] = "spool_refused"
    (outside / "original.jpg").write_bytes(good)
    os.link(outside / "original.jpg", spool / "hardlink.jpg")
    expected["hardlink.jpg"] = "spool_refused"
    for name in ("hash#tag.jpg", "plus+sign.jpg", "with spaces.jpg"):
        write(name, jpeg(42), "result")
    with open(os.open(spool.as_posix().encode() + b"/caf\xe9-latin1.jpg",
                      os.O_WRONLY | os.O_CREAT, 0o644), "wb") as handle:
        handle.write(jpeg(43))
    expected["caf\ufffd-latin1.jpg"] = "result"
    return expected


def test_bad_inputs_are_refused_one_by_one_and_the_daemon_keeps_going(tmp_path, broker,
                                                                      run_daemon):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    outside = tmp_path / "outside"
    outside.mkdir()
    subfolder = daemon.spool / "2026-11"  # a producer's own sub-folder: never taken
    subfolder.mkdir()
    (subfolder / "inside.jpg").write_bytes(jpeg(45))
    slow = open(daemon.spool / "slow-writer.jpg", "wb")  # 0 bytes, still open for writing
    expected = bad_corpus(daemon.spool, outside)
    time.sleep(3)  # several settle periods: the open empty file must not be taken
    slow.write(jpeg(44))
    slow.close()
    expected["slow-writer.jpg"] = "result"

    def outcomes():
        found = {name: "result" for name in subscriber.results_by_item()}
        for message in subscriber.on("errors"):
            body = message.json()
            jsonschema.validate(body, schema("error"))
            found.setdefault(body["source"]["item"], body["error"]["code"])
        return found

    wait_for(lambda: set(expected) <= set(outcomes()), 90, "an outcome for every bad input")
    assert {name: outcomes()[name] for name in expected} == expected
    assert (outside / "secret.jpg").exists() and (outside / "original.jpg").exists()
    failed = daemon.state / "failed"
    sidecar = json.loads((failed / "truncated.jpg.error.json").read_text())
    assert sidecar["code"] == "image_unreadable" and len(sidecar["sha256"]) == 64
    assert sidecar["attempts"] == 1
    assert (failed / "link.jpg").is_symlink()
    topics = {m.topic for m in subscriber.messages}
    assert topics <= {f"edge-ocr/test-box/{leaf}" for leaf in
                      ("status", "health", "results", "errors")}
    assert daemon.alive()
    assert daemon.spool_files() == []
    assert (subfolder / "inside.jpg").exists() and "inside.jpg" not in outcomes()


# --- commands, health, availability ---------------------------------------------------------

def test_commands_answer_on_the_response_topic_with_correlation_data(broker, run_daemon):
    subscriber = Subscriber(broker.port, topic_filter="#")
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    cmd = "edge-ocr/test-box/cmd/"
    page = render_page(51, lines=4)
    subscriber.publish(cmd + "ocr", cv2.imencode(".png", page.image)[1].tobytes(),
                       "client/replies", b"req-1")
    subscriber.publish(cmd + "status", b"", "client/replies", b"req-2")
    subscriber.publish(cmd + "ocr", b"not an image", "client/replies", b"req-3")
    subscriber.publish(cmd + "status", b"{not json", "client/replies", b"req-4")
    subscriber.publish(cmd + "reboot", b"", "client/replies", b"req-5")
    subscriber.publish(cmd + "rescan", b"", "client/replies", b"req-6")
    replies = wait_for(lambda: len(subscriber.on("replies")) >= 6 and subscriber.on("replies"),
                       60, "six replies")
    by_correlation = {m.correlation: m.json() for m in replies}
    for body in by_correlation.values():
        jsonschema.validate(body, schema("reply"))
    ocr = by_correlation[b"req-1"]
    assert ocr["ok"] and {l.text for l in page.lines} & {l["text"] for l in ocr["result"]["lines"]}
    assert by_correlation[b"req-2"]["ok"] and "processed" in by_correlation[b"req-2"]["result"]
    assert by_correlation[b"req-3"] == {"schema": 1, "command": "ocr", "ok": False, "error": {
        "code": "image_unreadable", "message": by_correlation[b"req-3"]["error"]["message"]}}
    assert by_correlation[b"req-4"]["error"]["code"] == "bad_command"
    assert by_correlation[b"req-5"]["error"]["code"] == "bad_command"
    assert by_correlation[b"req-6"]["ok"]
    assert not subscriber.on("results") and not subscriber.on("errors")
    assert daemon.alive()


def test_retry_failed_puts_failed_files_back(broker, run_daemon):
    subscriber = Subscriber(broker.port, topic_filter="#")
    daemon = run_daemon(broker.port)
    daemon.wait_ready(subscriber)
    daemon.drop("broken.jpg", b"\xff\xd8 nothing")
    wait_for(lambda: subscriber.on("errors"), 30, "the error message")
    failed = daemon.state / "failed" / "broken.jpg"
    assert failed.exists()
    failed.write_bytes(jpeg(61))  # an operator repaired the file
    subscriber.publish("edge-ocr/test-box/cmd/retry-failed", b"", "client/replies", b"r")
    reply = wait_for(lambda: subscriber.on("replies"), 30, "the reply")[0].json()
    assert reply["result"] == {"requeued": 1}
    wait_for(lambda: "broken.jpg" in subscriber.results_by_item(), 30, "the repaired result")
    assert not failed.exists()


def test_health_and_availability_are_retained(broker, run_daemon):
    watcher = Subscriber(broker.port)
    daemon = run_daemon(broker.port)
    daemon.wait_ready(watcher)
    wait_for(lambda: watcher.on("health"), 20, "a health message")
    late = Subscriber(broker.port)  # connects afterwards: gets only what is retained
    wait_for(lambda: late.on("health") and late.on("status"), 10, "retained messages")
    health = late.on("health")[0]
    assert health.retain and late.on("status")[0].retain
    jsonschema.validate(health.json(), schema("health"))
    jsonschema.validate(late.on("status")[0].json(), schema("status"))
    assert late.on("status")[0].json()["state"] == "online"
    assert health.json()["mqtt"]["connected"] is True
    daemon.kill()  # no clean exit: the broker publishes the last will
    wait_for(lambda: watcher.on("status")[-1].json()["state"] == "offline", 90, "the last will")


# --- RAM budget -----------------------------------------------------------------------------

NORMAL_SIZES = ((960, 720), (480, 1000), (1280, 720), (2480, 3508), (4000, 3000), (1600, 1200))


def normal_corpus(count: int) -> list[tuple[str, bytes]]:
    """`count` ordinary images: rendered pages from receipt to A4-scan and photo sizes."""
    encoded = []
    for i, (width, height) in enumerate(NORMAL_SIZES):
        page = render_page(700 + i, width=width, height=height, lines=12).image
        suffix = ".png" if i == len(NORMAL_SIZES) - 1 else ".jpg"
        encoded.append((suffix, cv2.imencode(suffix, page)[1].tobytes()))
    return [(f"normal-{n:03d}{encoded[n % len(encoded)][0]}", encoded[n % len(encoded)][1])
            for n in range(count)]


@pytest.mark.parametrize("pack, charset, grey, budget_mb", [
    ("ppocr-v6-small", "all", False, 256),
    ("ppocr-v6-tiny", "latin", True, 160)])  # as config/examples/pi-low-memory.yaml
def test_peak_rss_stays_inside_the_memory_budget(tmp_path, broker, run_daemon, pack, charset,
                                                 grey, budget_mb):
    subscriber = Subscriber(broker.port)
    daemon = run_daemon(broker.port, ocr={"pack": pack, "charset": charset},
                        images={"grey": grey}, resources={"memory_mb": budget_mb})
    daemon.wait_ready(subscriber)
    outside = tmp_path / "outside"
    outside.mkdir()
    expected = bad_corpus(daemon.spool, outside)
    for name, data in normal_corpus(200):
        daemon.drop(name, data)
        expected[name] = "result"

    def handled():
        items = set(subscriber.results_by_item())
        items |= {m.json()["source"]["item"] for m in subscriber.on("errors")}
        return set(expected) <= items

    wait_for(handled, 900, "every image of the corpus")
    peak = daemon.peak_rss_mb()
    print(f"{pack}: peak RSS {peak:.0f} MB for a {budget_mb} MB budget")
    assert peak <= budget_mb
    assert "plan: budget" in daemon.log_text()
    assert all(name in subscriber.results_by_item() for name, outcome in expected.items()
               if outcome == "result")
