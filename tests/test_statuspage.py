"""The status page in a real headless Chromium, and `edge-ocr status`, against a real daemon and a
real Mosquitto: the page shows the last result's text and its annotated image, escapes what
comes from outside, changes nothing, and the terminal command says what the page says."""

from __future__ import annotations

import html
import http.client
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from conftest import run_cli
from daemon_kit import Daemon, Subscriber, free_port, wait_for
from edge.models.calibration import render_page

CHROMIUM = shutil.which("chromium")
BAD_NAME = "<b>bad&name.jpg"  # a file name is the outside world's text: it must stay text


def chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, nothing fetched but the page."""
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/system-packages.sh --test installs it")
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=120)


def box_pixels(image: np.ndarray) -> int:
    """Pixels of the colour boxes are drawn in (orange: BGR 0, 160, 255), which neither the
    rendered pages nor the page's own style use."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(((b < 90) & (g > 100) & (g < 215) & (r > 190)).sum())


def request(port: int, method: str, path: str, host: str = "127.0.0.1") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers={"Host": host})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.fixture
def daemon_with_page(tmp_path, broker):
    port = free_port()
    daemon = Daemon(tmp_path / "box", broker.port,
                    {"http": {"listen": f"127.0.0.1:{port}", "refresh_seconds": 0}}).start()
    daemon.http_port = port
    yield daemon
    if daemon.alive():
        daemon.kill()


def test_page_in_chromium_shows_the_last_result_and_its_annotated_image(tmp_path, broker,
                                                                         daemon_with_page):
    subscriber = Subscriber(broker.port)
    daemon = daemon_with_page
    daemon.wait_ready(subscriber)
    daemon.drop(BAD_NAME, b"not an image at all")
    daemon.drop("receipt.jpg", cv2.imencode(".jpg", render_page(41, lines=6).image)[1].tobytes())
    result = wait_for(lambda: subscriber.on("results"), 60, "the result")[0].json()
    wait_for(lambda: subscriber.on("errors"), 20, "the bad file's error")
    url = f"http://127.0.0.1:{daemon.http_port}/"

    dom = chromium(tmp_path, url, "--dump-dom").stdout
    assert 'id="verdict">working<' in dom
    assert "<th>frames read</th><td>1</td>" in dom and "<th>frames failed</th><td>1</td>" in dom
    assert all(html.escape(line["text"], quote=False) in dom for line in result["lines"])
    number = re.search(r'<img src="image/([0-9]+)\.jpg" alt="receipt\.jpg, annotated">', dom)
    assert number, "no annotated image for the result"
    assert html.escape(BAD_NAME, quote=False) in dom and "<b>bad" not in dom
    assert "image_unreadable" in dom

    shot = tmp_path / "status-page.png"
    chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1100,1600",
             "--hide-scrollbars")
    assert box_pixels(cv2.imread(str(shot))) > 40, "the annotated image is not on the page"
    image = request(daemon.http_port, "GET", f"/image/{number.group(1)}.jpg")
    assert image.status == 200 and image.getheader("Content-Type") == "image/jpeg"


def test_page_changes_nothing_and_answers_only_for_this_box(broker, daemon_with_page):
    subscriber = Subscriber(broker.port)
    daemon = daemon_with_page
    daemon.wait_ready(subscriber)
    port = daemon.http_port
    assert request(port, "GET", "/").status == 200
    assert request(port, "GET", "/health.json").status == 200
    for method in ("POST", "PUT", "DELETE"):
        assert request(port, method, "/").status == 405
    assert request(port, "GET", "/", host="attacker.example:8080").status == 421  # DNS rebinding
    assert request(port, "GET", "/image/1.jpg").status == 404
    assert request(port, "GET", "/../../etc/passwd").status == 404
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 10
    with pytest.raises(ConnectionRefusedError):
        request(port, "GET", "/")


def test_status_command_reports_the_live_daemon_then_its_stop(broker, daemon_with_page):
    subscriber = Subscriber(broker.port)
    daemon = daemon_with_page
    daemon.wait_ready(subscriber)
    daemon.drop("receipt.jpg", cv2.imencode(".jpg", render_page(42, lines=4).image)[1].tobytes())
    wait_for(lambda: subscriber.on("results"), 60, "the result")
    done = run_cli("status", "--config", str(daemon.config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("test-box: online, answered now\nworking\n")
    assert "frames read    1\n" in done.stdout and f"folder {daemon.spool}" in done.stdout
    assert daemon.terminate()[0] == 0
    done = run_cli("status", "--config", str(daemon.config), "--timeout", "2")
    assert done.returncode == 1
    assert done.stdout.startswith("test-box: stopped at ")
    assert "its last health message" in done.stdout
