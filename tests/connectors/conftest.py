"""Fixtures for the connector unit tests: a real HTTP server on 127.0.0.1, and helpers.

Nothing here needs Celery or Redis: the tests call the connector classes directly.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connectors.base import Connector
from connectors.http import Request

SLOW_RELEASE_S = 5.0  # the slow endpoint answers after this (or when the server stops)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
        pass

    # Every method goes through one dispatcher.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = url.path
        if path == "/json":
            self._json(200, {"hello": "world", "n": 1, "items": [1, 2, 3]})
        elif path == "/text":
            self._send(200, b"just some text, not JSON {", "text/plain; charset=utf-8")
        elif path == "/echo":
            self._json(201, {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query, keep_blank_values=True),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            })
        elif path == "/empty":
            self._send(204)
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            # A fixed body: error messages may quote it, and it must never echo the request.
            self._send(status, f"failure {status}".encode(), "text/plain")
        elif path == "/slow":
            self.server.release.wait(SLOW_RELEASE_S)
            self._send(200, b"finally", "text/plain")
        elif path == "/redirect":
            self._send(302, b"", headers={"Location": "/json"})
        elif path == "/loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif path == "/badgzip":
            self._send(200, b"this is not gzip at all", "text/plain", {"Content-Encoding": "gzip"})
        else:
            self._send(404, b"no such endpoint", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The client gave up (a timeout test): writing the late answer fails, which is expected.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass(frozen=True)
class HttpServer:
    host: str
    port: int

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpServer]:
    """A real HTTP server on 127.0.0.1 (a free port), serving in a thread."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-http-server", daemon=True)
    thread.start()
    try:
        yield HttpServer("127.0.0.1", server.server_address[1])
    finally:
        server.release.set()  # let slow handlers finish at once
        server.shutdown()
        server.server_close()  # joins the handler threads
        thread.join(5)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose port is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/x"
    finally:
        sock.close()


@pytest.fixture
def http() -> Iterator[Request]:
    """An ``http.request`` action; its pooled client is closed afterwards."""
    connector = Request()
    yield connector
    connector.close()


@pytest.fixture
def call() -> Callable[..., Any]:
    """``call(connector, **with_)``: validate the ``with:`` block, then run the action."""

    def run(connector: Connector, /, **with_: Any) -> Any:
        return connector.execute_action(connector.parse_inputs(with_))

    return run


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """``make_module(name, source)``: an importable module written to a temp folder."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)
