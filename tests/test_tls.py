"""TLS to the broker end to end: certificates made here with the openssl CLI, a Mosquitto with a
TLS listener, the real daemon.

Each broker has two listeners: a plain anonymous one for the test's own subscriber and a TLS one,
with its own authentication and ACL, for the daemon (`per_listener_settings true` keeps the two
apart). The daemon only ever gets the TLS port, which speaks nothing but TLS.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from daemon_kit import Broker, Daemon, Subscriber, free_port, listening, wait_for
from edge.config import MqttConfig, TlsConfig
from edge.delivery.mqtt import MqttLink
from edge.delivery.payload import Topics
from edge.models.calibration import render_page

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
PASSWORD = "tls-s3cret"
WATCH_SECONDS = 10  # long enough for paho's 1-2-4 s back-off to retry three times


# --- certificates -----------------------------------------------------------------------------

class Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and an
    unrelated CA: PEM files in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca, self.other_ca = folder / "ca.crt", folder / "other-ca.crt"
        self.server_cert, self.server_key = folder / "server.crt", folder / "server.key"


def openssl(folder: Path, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=folder, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    """A self-signed EC CA: `<name>.crt` and `<name>.key`."""
    openssl(folder, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_leaf(folder: Path, name: str, ca: str, usage: str, extra: str = "") -> None:
    """An EC certificate `<name>.crt` (key `<name>.key`) signed by the CA `<ca>`."""
    openssl(folder, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (folder / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n{extra}")
    openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
            f"{ca}.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_leaf(folder, "server", "ca", "serverAuth", "subjectAltName=IP:127.0.0.1\n")
    make_leaf(folder, "client", "ca", "clientAuth")
    return Certs(folder)


# --- broker, daemon, subscriber ---------------------------------------------------------------

class TlsBroker(Broker):
    """Mosquitto with a plain anonymous listener on `port` (for the test's subscriber) and a TLS
    listener on `tls_port` whose own settings (`tls_conf`: auth, ACL) apply to the daemon."""

    def __init__(self, folder: Path, certs: Certs, tls_conf: str = "allow_anonymous true\n"):
        super().__init__(folder)
        self.tls_port = free_port()
        # As root, Mosquitto drops to its own user before it reads the keys in a 0700 tmp dir.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}per_listener_settings true\npersistence false\n"
            f"log_dest file {folder}/mosquitto.log\nlog_type all\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\ncafile {certs.ca}\n"
            f"certfile {certs.server_cert}\nkeyfile {certs.server_key}\n{tls_conf}")

    def _listening(self) -> bool:
        return listening(self.port) and listening(self.tls_port)

    def log_text(self) -> str:
        log = self.folder / "mosquitto.log"
        return log.read_text(errors="replace") if log.exists() else ""


@pytest.fixture
def tls_broker(tmp_path, certs):
    started: list[TlsBroker] = []

    def start(tls_conf: str = "allow_anonymous true\n") -> TlsBroker:
        broker = TlsBroker(tmp_path / f"broker{len(started)}", certs, tls_conf).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def subscribe():
    made: list[Subscriber] = []

    def make(port: int) -> Subscriber:
        made.append(Subscriber(port))
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.close()


def password_broker_conf(tmp_path: Path, acl: str = "") -> str:
    """TLS listener settings: user `daemon` with PASSWORD, no anonymous clients, an ACL if
    given."""
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "daemon", PASSWORD],
                   check=True, capture_output=True)
    conf = f"allow_anonymous false\npassword_file {passwords}\n"
    if acl:
        (tmp_path / "mosquitto.acl").write_text(acl)
        conf += f"acl_file {tmp_path / 'mosquitto.acl'}\n"
    return conf


def password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "daemon-password"
    path.write_text(password + "\n")
    return str(path)


def page(seed: int):
    return render_page(seed, lines=4)


def jpeg(rendered) -> bytes:
    return cv2.imencode(".jpg", rendered.image)[1].tobytes()


def assert_result_read(subscriber: Subscriber, name: str, rendered) -> None:
    """The result for `name` arrives and holds text that was on the page."""
    body = wait_for(lambda: subscriber.results_by_item().get(name), 60, f"the result of {name}")
    read = {line["text"] for line in body["lines"] if line["text"].strip()}
    assert read, body
    assert read & {line.text for line in rendered.lines}, (read, rendered.lines)


def outbox_depth(daemon: Daemon) -> int:
    path = daemon.state / "outbox.db"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone() is None:
            return 0
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def lines_with(daemon: Daemon, text: str) -> list[str]:
    """The daemon's ERROR lines that contain `text`."""
    return [line for line in daemon.log_text().splitlines()
            if line.startswith("ERROR") and text in line]


def watch_until(started: float) -> None:
    """Sleep until WATCH_SECONDS after `started` (time.monotonic())."""
    time.sleep(max(0.0, started + WATCH_SECONDS - time.monotonic()))


# --- connections that work --------------------------------------------------------------------

def test_server_authenticated_tls_delivers_results(certs, tls_broker, run_daemon, subscribe):
    broker = tls_broker()
    subscriber = subscribe(broker.port)
    daemon = run_daemon(broker.tls_port, mqtt={"tls": {"ca_file": str(certs.ca)}})
    daemon.wait_ready(subscriber)
    rendered = page(11)
    daemon.drop("over-tls.jpg", jpeg(rendered))
    assert_result_read(subscriber, "over-tls.jpg", rendered)
    assert subscriber.on("status")[-1].json()["state"] == "online"
    assert not lines_with(daemon, "cannot connect")


def test_client_certificate_required_by_the_broker(certs, tls_broker, run_daemon, subscribe,
                                                   monkeypatch):
    broker = tls_broker("require_certificate true\nallow_anonymous true\n")
    subscriber = subscribe(broker.port)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(certs.folder))  # relative paths: from here
    daemon = run_daemon(broker.tls_port, mqtt={"tls": {
        "ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}})
    daemon.wait_ready(subscriber)
    rendered = page(12)
    daemon.drop("with-client-cert.jpg", jpeg(rendered))
    assert_result_read(subscriber, "with-client-cert.jpg", rendered)


def test_username_and_password_over_tls(tmp_path, certs, tls_broker, run_daemon, subscribe):
    broker = tls_broker(password_broker_conf(tmp_path))
    subscriber = subscribe(broker.port)
    daemon = run_daemon(broker.tls_port, mqtt={
        "tls": {"ca_file": str(certs.ca)}, "username": "daemon",
        "password_file": password_file(tmp_path, PASSWORD)})
    daemon.wait_ready(subscriber)
    rendered = page(13)
    daemon.drop("with-password.jpg", jpeg(rendered))
    assert_result_read(subscriber, "with-password.jpg", rendered)


# --- connections that fail: the daemon stays up, says why once, and keeps the results ---------

def test_wrong_password_is_logged_once_and_the_daemon_stays_up(tmp_path, certs, tls_broker,
                                                               run_daemon):
    broker = tls_broker(password_broker_conf(tmp_path))
    daemon = run_daemon(broker.tls_port, mqtt={
        "tls": {"ca_file": str(certs.ca)}, "username": "daemon",
        "password_file": password_file(tmp_path, "not-the-password")})
    started = time.monotonic()
    daemon.drop("kept.jpg", jpeg(page(14)))
    wait_for(lambda: outbox_depth(daemon) == 1, 60, "the result queued in the outbox")
    watch_until(started)
    assert daemon.alive()
    assert daemon.spool_files() == []
    log = daemon.log_text()
    assert "Traceback" not in log
    # Mosquitto 2.0.11 answers a v5 CONNECT with a wrong password with 0x87 Not authorized.
    refused = lines_with(daemon, "the broker refused the connection: Not authorized")
    assert len(refused) == 1, log
    assert refused[0].startswith("ERROR ") and f"127.0.0.1:{broker.tls_port}" in refused[0]
    assert broker.log_text().count("not authorised") >= 3, "too few retries to prove anything"


def test_wrong_ca_is_logged_once_and_the_result_waits_in_the_outbox(certs, tls_broker,
                                                                     run_daemon):
    broker = tls_broker()
    daemon = run_daemon(broker.tls_port, mqtt={"tls": {"ca_file": str(certs.other_ca)}})
    started = time.monotonic()
    daemon.drop("kept.jpg", jpeg(page(15)))
    wait_for(lambda: outbox_depth(daemon) == 1, 60, "the result queued in the outbox")
    watch_until(started)
    assert daemon.alive()
    assert daemon.spool_files() == []
    log = daemon.log_text()
    assert "Traceback" not in log
    failures = lines_with(daemon, "TLS: certificate verify failed")
    assert len(failures) == 1, log
    assert failures[0].startswith("ERROR ") and f"127.0.0.1:{broker.tls_port}" in failures[0]
    assert broker.log_text().count("unknown ca") >= 3, "too few retries to prove anything"


def test_missing_client_certificate_is_logged_once(certs, tls_broker, run_daemon):
    broker = tls_broker("require_certificate true\nallow_anonymous true\n")
    started = time.monotonic()
    daemon = run_daemon(broker.tls_port, mqtt={"tls": {"ca_file": str(certs.ca)}})
    watch_until(started)
    assert daemon.alive() and "Traceback" not in daemon.log_text()
    assert broker.log_text().count("peer did not return a certificate") >= 3
    assert len(lines_with(daemon, f"cannot connect to 127.0.0.1:{broker.tls_port}")) == 1


def test_link_keeps_the_last_error_and_clears_it_once_connected(tmp_path, certs, caplog):
    caplog.set_level(logging.INFO, logger="edge.delivery.mqtt")
    broker = TlsBroker(tmp_path / "broker", certs)  # not started yet: nothing listens
    topics = Topics("edge-ocr", "test-box")
    wrong_ca = MqttLink(MqttConfig(host="127.0.0.1", port=broker.tls_port, client_id="wrong-ca",
                                   tls=TlsConfig(ca_file=certs.other_ca)), topics, print)
    good = MqttLink(MqttConfig(host="127.0.0.1", port=broker.tls_port, client_id="good",
                               tls=TlsConfig(ca_file=certs.ca)), topics, print)
    try:
        good.start()
        wait_for(lambda: good.last_error, 10, "the refused connection")
        assert good.last_error == "Connection refused" and not good.connected
        broker.start()
        wrong_ca.start()
        wait_for(lambda: good.connected, 15, "the link to connect once the broker is up")
        assert good.last_error is None
        wait_for(lambda: wrong_ca.last_error, 10, "the TLS failure")
        assert wrong_ca.last_error.startswith("TLS: certificate verify failed: ")
        assert not wrong_ca.connected
    finally:
        good.stop()
        wrong_ca.stop()
        broker.stop()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [m for m in messages if "Connection refused" in m[1]] == [
        ("ERROR", f"cannot connect to 127.0.0.1:{broker.tls_port}: Connection refused; "
                  "retrying with back-off"),
        ("INFO", f"connected to 127.0.0.1:{broker.tls_port}; the earlier failure is over "
                 "(Connection refused)")]


# --- an ACL that refuses the results ----------------------------------------------------------

DAEMON_ACL = """user daemon
topic write edge-ocr/test-box/status
topic write edge-ocr/test-box/health
topic write edge-ocr/test-box/errors
topic write edge-ocr/test-box/replies
topic read edge-ocr/test-box/cmd/#
"""


def test_results_refused_by_the_acl_are_counted_and_nothing_else_is_lost(
        tmp_path, certs, tls_broker, run_daemon, subscribe):
    broker = tls_broker(password_broker_conf(tmp_path, DAEMON_ACL))
    subscriber = subscribe(broker.port)
    daemon = run_daemon(broker.tls_port, mqtt={
        "tls": {"ca_file": str(certs.ca)}, "username": "daemon",
        "password_file": password_file(tmp_path, PASSWORD)})
    daemon.wait_ready(subscriber)
    daemon.drop("denied-1.jpg", jpeg(page(16)))
    daemon.drop("denied-2.jpg", jpeg(page(17)))

    def health_with_two_rejected():
        bodies = [json.loads(m.payload) for m in subscriber.on("health")]
        return next((b for b in reversed(bodies) if b["outbox"]["rejected"] == 2), None)

    health = wait_for(health_with_two_rejected, 60, "health counting two refused results")
    assert health["outbox"]["depth"] == 0 and health["outbox"]["inflight"] == 0
    assert health["mqtt"]["connected"] is True
    assert not subscriber.on("results")
    assert daemon.alive() and daemon.spool_files() == []
    assert subscriber.on("status")[-1].json()["state"] == "online"
    # Mosquitto 2.0.11 answers a v5 PUBLISH the ACL denies with PUBACK 0x87 Not authorized.
    refused = lines_with(daemon, "broker refused message")
    assert len(refused) == 2 and all("Not authorized" in line for line in refused), refused
    assert broker.log_text().count("Denied PUBLISH") == 2
    assert "Traceback" not in daemon.log_text()
