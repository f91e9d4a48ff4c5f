"""The lease renewer of one worker process, run as a process of its own (see lease.py).

``python -P taskplatform/lease_helper.py`` (by path: it imports no part of taskplatform, so
it starts in milliseconds; ``-P`` keeps taskplatform/ itself, whose secrets.py would shadow the
standard module, off ``sys.path``). Its parent writes one JSON object per line on its stdin:

    {"op": "hold", "id": 7, "url": "redis://...", "key": "run:R:task:S:status",
     "token": "...", "ttl_ms": 15000}
    {"op": "drop", "id": 7}

and it renews each held lease every ``ttl/3`` while the key still holds ``running:<token>``.
It exits when its stdin reaches end of file or its parent changes (the parent died, however),
so a lease lives exactly as long as the process that runs the step: a step stuck in C code
holding the GIL keeps its lease, a killed one loses it ``ttl`` later.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

import redis

# Extends a lease only while the key still holds it (the step has not settled or lost it).
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == 'running:' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
IDLE_S = 1.0  # how often it looks at its parent when it holds nothing


def main() -> int:
    parent = os.getppid()
    fd = sys.stdin.fileno()
    clients: dict[str, Any] = {}
    leases: dict[int, dict[str, Any]] = {}
    pending = b""
    next_renew = time.monotonic()
    while os.getppid() == parent:
        wait = max(0.0, min(next_renew - time.monotonic(), IDLE_S))
        if select.select([fd], [], [], wait)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return 0  # the parent closed the pipe: it exited or died
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if msg["op"] == "hold":
                    leases[msg["id"]] = msg  # first renewed a third of its TTL from now
                    next_renew = min(next_renew, time.monotonic() + msg["ttl_ms"] / 3000)
                else:
                    leases.pop(msg["id"], None)
        if time.monotonic() >= next_renew:
            for lease_id, le in list(leases.items()):
                try:
                    client = clients.get(le["url"])
                    if client is None:
                        client = clients[le["url"]] = redis.Redis.from_url(
                            le["url"], socket_connect_timeout=5, socket_timeout=5)
                    if not client.eval(RENEW_LUA, 1, le["key"], le["token"], le["ttl_ms"]):
                        leases.pop(lease_id, None)  # settled, released, or lost to an expiry
                except Exception as exc:  # noqa: BLE001 - Redis may be restarting: try again next round
                    print(f"taskplatform lease helper: cannot renew {le['key']}: {exc}",
                          file=sys.stderr, flush=True)
            period = min((le["ttl_ms"] for le in leases.values()), default=IDLE_S * 3000) / 3000
            next_renew = time.monotonic() + max(0.2, period)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
