"""The worker's operations endpoint: ``/metrics`` (Prometheus) and ``/health`` (JSON), one port.

Served by a small threaded HTTP server in the worker's main process (never in pool children:
one child would bind the port and report only its own samples).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class OpsServer:
    """``GET /metrics`` and ``GET /health`` on ``host:port``, in a daemon thread."""

    def __init__(self, host: str, port: int, *, registry: Any, health: HealthFn) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self.health = health
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OpsServer:
        """Bind and serve; raises OSError when the port is taken."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path in ("/health", "/healthz"):
                    healthy, body = server.health()
                    self._send(200 if healthy else 503, "application/json",
                               json.dumps(body, sort_keys=True).encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"try /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("ops endpoint: " + fmt, *args)

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="taskplatform-ops",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
