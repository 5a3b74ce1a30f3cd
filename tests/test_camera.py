"""Camera sources: a video file written here, a stream served by a local ffmpeg, a dead camera."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import pytest

from daemon_kit import Daemon, Subscriber, free_port, listening, wait_for
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
