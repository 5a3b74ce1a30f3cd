"""The fleet pattern: a local Mosquitto on the device, bridged to a central broker."""

from __future__ import annotations

import cv2

from daemon_kit import Broker, Daemon, Subscriber, wait_for
from edge.models.calibration import render_page


def page_jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", render_page(seed, lines=4).image)[1].tobytes()


def test_results_reach_the_central_broker_including_those_made_while_it_was_down(tmp_path):
    central = Broker(tmp_path / "central").start()
    bridge = (f"connection central\naddress 127.0.0.1:{central.port}\n"
              "topic edge-ocr/# out 1\ncleansession false\nrestart_timeout 1\n")
    local = Broker(tmp_path / "local", extra_conf=bridge).start()
    fleet = Subscriber(central.port, client_id="fleet-dashboard", persistent=True)
    daemon = Daemon(tmp_path / "device", local.port).start()
    try:
        daemon.drop("before.jpg", page_jpeg(1))
        wait_for(lambda: "before.jpg" in fleet.results_by_item(), 90, "a result at the centre")
        central.stop()
        for name, seed in (("during-1.jpg", 2), ("during-2.jpg", 3)):
            daemon.drop(name, page_jpeg(seed))
        wait_for(lambda: not daemon.spool_files(), 60, "the device to process both files")
        central.start()
        wait_for(lambda: {"during-1.jpg", "during-2.jpg"} <= set(fleet.results_by_item()), 60,
                 "results made while the centre was down")
        assert daemon.terminate()[0] == 0
    finally:
        if daemon.alive():
            daemon.kill()
        fleet.close()
        local.stop()
        central.stop()

