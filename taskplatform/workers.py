"""Which workers are up, what they consume and run, their last heartbeat, and queue depths.

Read with Celery's remote control (``inspect``), the event stream (heartbeats) and ``LLEN``
on the broker's queue lists; nothing here changes a worker.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from celery import Celery

from taskplatform import defaults
from taskplatform.errors import BackendError

# kombu's Redis transport keeps priorities 3, 6 and 9 of queue Q in lists "Q\x06\x16{n}".
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


@dataclass
class WorkerInfo:
    name: str
    queues: list[str] = field(default_factory=list)
    active: list[dict[str, Any]] = field(default_factory=list)
    pool: str | None = None
    concurrency: int | None = None
    processed: int | None = None
    last_heartbeat_s_ago: float | None = None


def queue_depths(client: redis.Redis, *, prefix: str = "",
                 queues: tuple[str, ...] = defaults.QUEUES) -> dict[str, int]:
    """Messages waiting in each queue (all priority lists together)."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for key in (q, *(f"{q}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)):
            pipe.llen(f"{prefix}{key}")
    counts = pipe.execute()
    per = 1 + len(PRIORITY_STEPS)
    return {q: int(sum(counts[i * per:(i + 1) * per])) for i, q in enumerate(queues)}


def heartbeats(app: Celery, *, listen_s: float) -> dict[str, float]:
    """hostname -> time of its latest heartbeat, from the event stream (asks workers to beat now)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + listen_s

    def on_event(event: dict[str, Any]) -> None:
        if event.get("hostname") and event.get("type") in ("worker-heartbeat", "worker-online"):
            seen[event["hostname"]] = float(event.get("timestamp") or time.time())
        if time.monotonic() >= deadline:  # events keep coming: stop on time, not on silence
            receiver.should_stop = True

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        try:
            receiver.capture(limit=None, timeout=listen_s, wakeup=True)
        except TimeoutError:
            pass
    return seen


def describe_workers(app: Celery, *, timeout_s: float = 1.0,
                     listen_s: float = defaults.HEARTBEAT_LISTEN_S) -> list[WorkerInfo]:
    """Every worker answering a ping within ``timeout_s``, sorted by name."""
    inspect = app.control.inspect(timeout=timeout_s)
    try:
        pings = inspect.ping() or {}
    except Exception as exc:  # kombu/redis errors surface here when the broker is away
        raise BackendError(f"cannot reach the broker: {type(exc).__name__}: {exc}") from exc
    if not pings:
        return []
    names = sorted(pings)
    inspect = app.control.inspect(destination=names, timeout=timeout_s)
    queues = inspect.active_queues() or {}
    active = inspect.active() or {}
    stats = inspect.stats() or {}
    beats = heartbeats(app, listen_s=listen_s) if listen_s > 0 else {}
    now = time.time()
    out = []
    for name in names:
        st = stats.get(name) or {}
        pool = st.get("pool") or {}
        totals = st.get("total") or {}
        out.append(WorkerInfo(
            name=name,
            queues=sorted(q["name"] for q in queues.get(name) or []),
            active=[{"id": t.get("id"), "name": t.get("name"), "args": t.get("args"),
                     "started": t.get("time_start")} for t in active.get(name) or []],
            pool=(pool.get("implementation") or "").split(":", 1)[0].rsplit(".", 1)[-1] or None,
            concurrency=pool.get("max-concurrency"),
            processed=sum(totals.values()) if totals else 0,
            last_heartbeat_s_ago=round(now - beats[name], 1) if name in beats else None,
        ))
    return out


def snapshot(app: Celery, client: redis.Redis, *, prefix: str = "", timeout_s: float = 1.0,
             listen_s: float = defaults.HEARTBEAT_LISTEN_S) -> dict[str, Any]:
    """Workers and queue depths as one JSON-ready dict."""
    try:
        depths = queue_depths(client, prefix=prefix)
    except redis.RedisError as exc:
        raise BackendError(f"cannot reach Redis: {type(exc).__name__}: {exc}") from exc
    workers = describe_workers(app, timeout_s=timeout_s, listen_s=listen_s)
    return {"workers": [asdict(w) for w in workers], "queues": depths}
