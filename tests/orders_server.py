"""A small real HTTP server on 127.0.0.1 serving orders, for the http and report examples."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.localhttp import JSONHandler, LocalHTTPServer

ORDERS = [
    {"id": 1, "customer": "ada", "region": "eu", "items": [{"sku": "a", "qty": 2, "price": 30}]},
    {"id": 2, "customer": "bob", "region": "us",
     "items": [{"sku": "b", "qty": 1, "price": 55}, {"sku": "c", "qty": 3, "price": 5}]},
    {"id": 3, "customer": "cyd", "region": "eu",
     "items": [{"sku": "a", "qty": 1, "price": 30}, {"sku": "d", "qty": 1, "price": 9},
               {"sku": "e", "qty": 4, "price": 1}]},
]


class _Handler(JSONHandler):
    def do_GET(self):  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/")
        hits = self.server.owner.hits  # type: ignore[attr-defined]
        hits[path] = hits.get(path, 0) + 1
        if path == "/orders":
            return self._send(200, ORDERS)
        if path.startswith("/orders/"):
            oid = path.rsplit("/", 1)[-1]
            for order in ORDERS:
                if str(order["id"]) == oid:
                    return self._send(200, order)
            return self._send(404, {"error": f"no order {oid}"})
        return self._send(404, {"error": "not found"})


class OrdersServer(LocalHTTPServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.hits: dict[str, int] = {}
