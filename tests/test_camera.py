"""Camera sources: a video file written here, a stream served by a local ffmpeg, a dead camera,
regions of interest."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from daemon_kit import Daemon, Subscriber, free_port, listening, wait_for
from edge.config import parse_config
from edge.errors import ConfigError
from edge.models.calibration import render_page

PAGES = (81, 82, 83)


def write_video(path, frames_per_page: int = 10) -> dict[int, set[str]]:
    """An MJPEG AVI at 10 fps: each page held for `frames_per_page` frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (960, 720))
    texts = {}
    for seed in PAGES:
        page = render_page(seed, lines=4)
        texts[seed] = {line.text for line in page.lines}
        for _ in range(frames_per_page):
            writer.write(page.image)
    writer.release()
    return texts


def camera_daemon(tmp_path, port, url, **camera) -> Daemon:
    settings = {"sources": {"folders": [], "cameras": [
        {"name": "gate", "url": url, "interval_seconds": 0.1, "heartbeat_seconds": 3600,
         "open_timeout_seconds": 5, "read_timeout_seconds": 5, **camera}]}}
    return Daemon(tmp_path / "daemon", port, settings).start()


def test_video_file_results_only_when_the_text_changes(tmp_path, broker):
    texts = write_video(tmp_path / "gate.avi")
    subscriber = Subscriber(broker.port)
    daemon = camera_daemon(tmp_path, broker.port, str(tmp_path / "gate.avi"))
    try:
        wait_for(lambda: any(m.json()["sources"]["gate"]["state"] == "ended"
                             for m in subscriber.on("health")), 90, "the video to end")
        wait_for(lambda: len(subscriber.on("results")) >= 3, 30, "three results")
        results = [m.json() for m in subscriber.on("results")]
        assert len(results) == 3, [r["text"] for r in results]  # one per page, not per frame
        for body, seed in zip(results, PAGES):
            assert body["source"]["type"] == "camera" and body["source"]["name"] == "gate"
            assert {line["text"] for line in body["lines"]} & texts[seed]
        health = subscriber.on("health")[-1].json()["sources"]["gate"]
        assert health["frames_read"] == 30 and health["frames_skipped"] >= 20
        assert daemon.terminate()[0] == 0
    finally:
        if daemon.alive():
            daemon.kill()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_network_stream_from_a_local_ffmpeg_server(tmp_path, broker):
    write_video(tmp_path / "gate.avi", frames_per_page=20)
    port = free_port()
    url = f"http://127.0.0.1:{port}/gate.mjpg"
    server = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
         "-i", str(tmp_path / "gate.avi"), "-c:v", "copy", "-f", "mpjpeg", "-listen", "1", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subscriber = Subscriber(broker.port)
    daemon = camera_daemon(tmp_path, broker.port, url)
    try:
        wait_for(lambda: subscriber.on("results"), 90, "a result from the stream")
        body = subscriber.on("results")[0].json()
        assert body["source"]["name"] == "gate" and body["lines"]
        assert daemon.terminate()[0] == 0
    finally:
        server.kill()
        if daemon.alive():
            daemon.kill()


def rtsp_server_available() -> bool:
    return shutil.which("ffmpeg") is not None and subprocess.run(
        ["perl", "-MRTSP::Server", "-e", "1"], capture_output=True).returncode == 0


@pytest.mark.skipif(not rtsp_server_available(),
                    reason="needs ffmpeg and Debian's librtsp-server-perl (scripts/test.sh installs both)")
def test_rtsp_stream_published_by_ffmpeg_through_a_local_rtsp_server(tmp_path, broker):
    write_video(tmp_path / "gate.avi", frames_per_page=20)
    client_port, source_port = free_port(), free_port()
    server = subprocess.Popen(
        ["perl", "-e", "use AnyEvent; use RTSP::Server; "
         "RTSP::Server->new_with_options()->listen; AnyEvent->condvar->recv", "--",
         "--clientport", str(client_port), "--serverport", str(source_port),
         "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    publisher = None
    daemon = None
    try:
        wait_for(lambda: listening(source_port), 10, "the RTSP server")
        publisher = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
             "-i", str(tmp_path / "gate.avi"), "-c:v", "libx264", "-preset", "ultrafast",
             "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-f", "rtsp",
             f"rtsp://127.0.0.1:{source_port}/gate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subscriber = Subscriber(broker.port)
        daemon = camera_daemon(tmp_path, broker.port, f"rtsp://127.0.0.1:{client_port}/gate",
                               rtsp_transport="udp", open_timeout_seconds=10,
                               read_timeout_seconds=10, reconnect_max_seconds=2)
        wait_for(lambda: subscriber.on("results"), 180, "a result from the RTSP stream")
        body = subscriber.on("results")[0].json()
        assert body["source"]["name"] == "gate" and body["lines"]
        assert daemon.terminate()[0] == 0
    finally:
        for process in (publisher, server):
            if process is not None:
                process.kill()
        if daemon is not None and daemon.alive():
            daemon.kill()


def test_dead_camera_shows_in_health_and_never_blocks_the_folder(tmp_path, broker):
    subscriber = Subscriber(broker.port)
    daemon = Daemon(tmp_path / "daemon", broker.port, {"sources": {
        "folders": [{"path": str(tmp_path / "daemon" / "spool"), "settle_seconds": 0.5}],
        "cameras": [{"name": "dead", "url": f"http://127.0.0.1:{free_port()}/none",
                     "open_timeout_seconds": 2, "reconnect_max_seconds": 2}]}}).start()
    try:
        daemon.wait_ready(subscriber)
        page = render_page(91, lines=4)
        daemon.drop("while-camera-dead.jpg", cv2.imencode(".jpg", page.image)[1].tobytes())
        wait_for(lambda: "while-camera-dead.jpg" in subscriber.results_by_item(), 60,
                 "the folder's result")
        dead = wait_for(lambda: [m.json()["sources"]["dead"] for m in subscriber.on("health")
                                 if m.json()["sources"]["dead"]["last_error"]], 30,
                        "the camera's failure in health")[-1]
        assert dead["state"] == "reconnecting" and dead["frames_read"] == 0
        code, seconds = daemon.terminate()
        assert code == 0 and seconds < 10
    finally:
        if daemon.alive():
            daemon.kill()


# --- regions of interest ------------------------------------------------------------------------

FONT, FONT_SCALE, STROKE = cv2.FONT_HERSHEY_SIMPLEX, 1.4, 3


def sign_frame(words: dict[str, tuple[int, int]], noise_seed: int = 1, size=(960, 720)):
    """A grey, noisy frame with each word drawn at its (x, baseline y); returns the frame and each
    word's drawn box (left, top, right, bottom) in frame pixels."""
    rng = np.random.default_rng(noise_seed)
    frame = np.clip(rng.normal(215, 6, (size[1], size[0], 1)), 0, 255).astype(np.uint8)
    frame = np.repeat(frame, 3, axis=2)
    boxes = {}
    for text, (x, y) in words.items():
        (width, height), base = cv2.getTextSize(text, FONT, FONT_SCALE, STROKE)
        cv2.putText(frame, text, (x, y), FONT, FONT_SCALE, (30, 30, 30), STROKE, cv2.LINE_AA)
        boxes[text] = (x, y - height, x + width, y + base)
    return frame, boxes


def write_frames(path, frames) -> None:
    """An MJPEG AVI at 10 fps, one video frame per given frame."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def read_to_the_end(tmp_path, broker, frames, **camera) -> tuple[list[dict], dict]:
    """Run the daemon on a video of `frames` until it ended; its results and the camera's
    last health."""
    write_frames(tmp_path / "gate.avi", frames)
    subscriber = Subscriber(broker.port)
    daemon = camera_daemon(tmp_path, broker.port, str(tmp_path / "gate.avi"), **camera)
    try:
        ended = lambda: [m.json()["sources"]["gate"] for m in subscriber.on("health")
                         if m.json()["sources"]["gate"]["state"] == "ended"]
        wait_for(ended, 90, "the video to end")
        wait_for(lambda: ended()[-1]["frames_read"] == len(frames) and len(ended()) >= 2, 30,
                 "health after the last frame")  # the worker is done with what it was given
        assert daemon.terminate()[0] == 0
        return [m.json() for m in subscriber.on("results")], ended()[-1]
    finally:
        if daemon.alive():
            daemon.kill()


def assert_inside(box, drawn, margin: float = 15) -> None:
    """Every corner of a reported box lies on the drawn word (grown by `margin` pixels)."""
    left, top, right, bottom = drawn
    for x, y in box:
        assert left - margin <= x <= right + margin and top - margin <= y <= bottom + margin, \
            (box, drawn)


def test_rectangle_region_reads_only_inside_and_reports_full_frame_pixels(tmp_path, broker):
    frame, drawn = sign_frame({"EXIT ONLY": (40, 120), "GATE 4471": (360, 520),
                               "BAY 19": (820, 500)})  # above, inside, right of the region
    results, _ = read_to_the_end(tmp_path, broker, [frame] * 3,
                                 region={"x": 300, "y": 400, "width": 500, "height": 200})
    assert len(results) == 1
    body = results[0]
    assert (body["image"]["width"], body["image"]["height"]) == (960, 720)  # the full frame
    assert [line["text"] for line in body["lines"]] == ["GATE 4471"]
    assert_inside(body["lines"][0]["box"], drawn["GATE 4471"])


def test_polygon_region_hides_its_rectangle_outside_the_polygon(tmp_path, broker):
    # a right triangle: its rectangle is 300-900 x 400-700, its long side runs from the top
    # right to the bottom left corner; PARK 88 lies in the rectangle's bottom right corner
    frame, drawn = sign_frame({"LANE 12": (320, 470), "PARK 88": (640, 660)})
    results, _ = read_to_the_end(tmp_path, broker, [frame] * 3,
                                 region={"polygon": [[300, 400], [900, 400], [300, 700]]})
    assert [line["text"] for line in results[0]["lines"]] == ["LANE 12"]
    assert_inside(results[0]["lines"][0]["box"], drawn["LANE 12"])


def test_change_outside_the_region_reads_nothing_again(tmp_path, broker):
    frames = []
    for i in range(12):  # a bus passes and a screen flickers: only outside the region
        frame, _ = sign_frame({"GATE 4471": (360, 520), f"BUS {i}": (40, 120)})
        frame[:300, 500:] = 255 * (i % 2)
        frames.append(frame)
    results, health = read_to_the_end(tmp_path, broker, frames,
                                      region={"x": 300, "y": 400, "width": 500, "height": 200})
    assert health["frames_read"] == 12 and health["frames_skipped"] == 11, health
    assert len(results) == 1 and results[0]["text"] == "GATE 4471"


def test_region_outside_the_frame_is_an_error_in_health_not_a_crash(tmp_path, broker):
    frame, _ = sign_frame({"GATE 4471": (360, 520)})
    results, health = read_to_the_end(tmp_path, broker, [frame] * 3,
                                      region={"x": 1000, "y": 100, "width": 300, "height": 200})
    assert results == []
    assert "outside its 960x720 frame" in health["last_error"], health


@pytest.mark.parametrize("region, message", [
    ({"polygon": [[0, 0], [100, 0]]}, "a polygon needs at least 3 [x, y] points, not 2"),
    ({"polygon": [[0, 0], [50, 50], [100, 100]]}, "the polygon's points enclose no area"),
    ({"x": 10, "y": 10, "width": 100}, "a rectangle needs x, y, width and height (missing "
                                       "height)"),
    ({"x": 10, "y": 10, "width": 100, "height": 50, "polygon": [[0, 0], [9, 0], [0, 9]]},
     "give either x, y, width and height (a rectangle) or polygon, not both"),
    ({"x": -5, "y": 10, "width": 100, "height": 50}, "region.x: Input should be greater than "
                                                      "or equal to 0"),
    ({"x": 0, "y": 0, "width": 100, "height": 99999}, "region.height: Input should be less "
                                                       "than or equal to 16384"),
])
def test_bad_region_is_refused_with_a_clear_message(region, message):
    with pytest.raises(ConfigError) as refused:
        parse_config({"sources": {"cameras": [{"name": "gate", "url": 0, "region": region}]}})
    assert "sources.cameras.0.region" in refused.value.message
    assert message in refused.value.message
