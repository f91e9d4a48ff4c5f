"""The largest task message a process publishes, recorded in Redis for the benchmark.

Imported by the benchmark's workers (``celery -A taskplatform worker --include bench.measure``;
``bench.bare_app`` imports it itself). It does nothing unless ``BENCH_MEASURE_REDIS`` holds a
redis-py URL (``unix:///...`` or ``redis://...``): then a ``before_task_publish`` handler
measures every message the process publishes as ``len(json.dumps(body)) +
len(json.dumps(headers, default=str))`` and keeps the maximum in Redis under
``bench:measure:max:<gen>``, where ``<gen>`` is the current value of ``bench:measure:gen``.

The benchmark bumps the generation before each shape (and waits :data:`GEN_TTL_S` for every
process to see it), then reads that generation's maximum after the shape: one figure per shape.

Cost: a process keeps its own maximum for the generation and only writes to Redis (one Lua
call) when that maximum grows, and reads the generation at most every :data:`GEN_TTL_S`, so
measuring adds almost nothing to the timings.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from celery.signals import before_task_publish

ENV = "BENCH_MEASURE_REDIS"
GEN_KEY = "bench:measure:gen"
MAX_KEY = "bench:measure:max:{gen}"
GEN_TTL_S = 0.25

# KEYS: max key. ARGV: size. Keeps the larger of the stored value and ARGV[1].
MAX_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400) end
return 1
"""


def message_size(body: Any, headers: Any) -> int:
    """Bytes of a message's body and headers as JSON (what goes over the wire, near enough)."""
    return len(json.dumps(body, default=str)) + len(json.dumps(headers, default=str))


class _Recorder:
    """Per-process state: a Redis client (made after the fork), the generation, the local max."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pid = -1
        self.lock = threading.Lock()
        self.client: Any = None
        self.script: Any = None
        self.gen = "0"
        self.gen_read_at = 0.0
        self.local_max = 0

    def _ensure(self) -> None:
        if self.pid != os.getpid():  # first use in this process, or after a fork
            import redis  # noqa: PLC0415

            self.client = redis.Redis.from_url(self.url, socket_connect_timeout=2)
            self.script = self.client.register_script(MAX_LUA)
            self.pid = os.getpid()
            self.gen_read_at = 0.0
            self.local_max = 0

    def record(self, size: int) -> None:
        with self.lock:
            self._ensure()
            now = time.monotonic()
            if now - self.gen_read_at > GEN_TTL_S:
                raw = self.client.get(GEN_KEY)
                gen = raw.decode() if raw else "0"
                self.gen_read_at = now
                if gen != self.gen:
                    self.gen, self.local_max = gen, 0
            if size > self.local_max:
                self.local_max = size
                self.script(keys=[MAX_KEY.format(gen=self.gen)], args=[size])


_recorder: _Recorder | None = None


def _on_publish(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    if _recorder is None:
        return
    try:
        _recorder.record(message_size(body, headers))
    except Exception:  # noqa: BLE001 - measuring must never break a publish
        pass


if os.environ.get(ENV):
    _recorder = _Recorder(os.environ[ENV])
    before_task_publish.connect(_on_publish, weak=False)
