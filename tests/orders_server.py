"""A small real HTTP server on 127.0.0.1 serving orders, for the http and report examples."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ORDERS = [
    {"id": 1, "customer": "ada", "region": "eu", "items": [{"sku": "a", "qty": 2, "price": 30}]},
    {"id": 2, "customer": "bob", "region": "us",
     "items": [{"sku": "b", "qty": 1, "price": 55}, {"sku": "c", "qty": 3, "price": 5}]},
    {"id": 3, "customer": "cyd", "region": "eu",
     "items": [{"sku": "a", "qty": 1, "price": 30}, {"sku": "d", "qty": 1, "price": 9},
               {"sku": "e", "qty": 4, "price": 1}]},
]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/")
        self.server.hits[path] = self.server.hits.get(path, 0) + 1  # type: ignore[attr-defined]
        if path == "/orders":
            return self._send(200, ORDERS)
        if path.startswith("/orders/"):
            oid = path.rsplit("/", 1)[-1]
            for order in ORDERS:
                if str(order["id"]) == oid:
                    return self._send(200, order)
            return self._send(404, {"error": f"no order {oid}"})
        return self._send(404, {"error": "not found"})


class OrdersServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.hits = {}  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> OrdersServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
