"""The local status page: `http.server` on one thread of its own, read-only.

Standard library only: one page, one JSON document and a few JPEGs do not need a web framework,
and a kiosk's RAM is better spent on models. Requests are served one at a time on the page's
thread, which owns a stop event and is joined on shutdown; a client that stalls is cut off after
a few seconds. Only GET and HEAD are answered: nothing here changes the daemon's state (commands
go over MQTT). The Host header must name this box (an address, `localhost`, the box's name or
the configured host), so a web page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Optional

from edge.daemon import statushtml
from edge.daemon.recent import RecentOutcomes
from edge.delivery import payload

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
_IMAGE = re.compile(r"^/image/([0-9]{1,12})\.jpg$")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
}


@dataclass(frozen=True)
class PageContent:
    """Where the page's content comes from."""

    device: str
    snapshot: Callable[[], dict[str, Any]]
    recent: RecentOutcomes
    refresh_seconds: int
    command_prefix: str


class StatusPage:
    """Serves the page on `address` from `start` until `stop`."""

    def __init__(self, address: tuple[str, int], content: PageContent) -> None:
        self._address = address
        self._content = content
        self._server: Optional[HTTPServer] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="status-page", daemon=True)

    @property
    def port(self) -> Optional[int]:
        """The port listened on (the one asked for, or the one given for port 0)."""
        return self._server.server_address[1] if self._server else None

    def start(self) -> None:
        """Listen and serve in the background. A port that cannot be had is logged, and the
        daemon runs without its page: the page is never worth a dead daemon."""
        host, port = self._address
        try:
            self._server = _Server(self._address, self._content)
        except OSError as exc:
            log.error("status page: cannot listen on %s:%d (%s); running without it", host, port,
                      exc.strerror or exc)
            return
        self._server.timeout = 0.5
        if not _is_loopback(host):
            log.warning("status page on %s:%d is reachable from the network", host, port)
        log.info("status page on http://%s:%d/", host if ":" not in host else f"[{host}]",
                 self.port)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, join the thread, close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REQUEST_TIMEOUT_S + 1)
        if self._server is not None:
            self._server.server_close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._server.handle_request()  # returns after `timeout` when nobody asks


class _Server(HTTPServer):
    def __init__(self, address: tuple[str, int], content: PageContent) -> None:
        self.address_family = _family(address[0])
        self.content = content
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        log.exception("status page: request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "edge-ocr"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        """The page, `health.json` or an annotated image."""
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        """As GET, without the body."""
        self._answer(body=False)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("status page: %s " + format, self.client_address[0], *args)

    def _answer(self, body: bool) -> None:
        if not _host_allowed(self.headers.get("Host", ""), self.server.server_address[0]):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"unknown host\n", body)
            return
        path = self.path.split("?", 1)[0]
        content = self.server.content
        if path == "/":
            page = statushtml.render(content.device, content.snapshot(),
                                     content.recent.outcomes(), content.refresh_seconds,
                                     content.command_prefix)
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode(), body)
        elif path == "/health.json":
            health = payload.health_body(content.device, content.snapshot())
            self._send(HTTPStatus.OK, "application/json", health, body)
        elif (match := _IMAGE.match(path)) and \
                (jpeg := content.recent.annotated_jpeg(int(match.group(1)))) is not None:
            self._send(HTTPStatus.OK, "image/jpeg", jpeg, body)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", body)

    def _send(self, status: HTTPStatus, kind: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_allowed(header: str, bound: str) -> bool:
    """An address, `localhost`, this box's name, or the host the page listens on."""
    name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
    name = name.strip("[]").lower()
    box = socket.gethostname().lower()
    if name in ("localhost", bound.lower(), box, f"{box}.local"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
