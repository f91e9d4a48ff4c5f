"""A bare Celery app for the benchmark: one ``noop`` task, JSON, acks late, Redis everywhere.

``celery -A bench.bare_app worker -Q bare ...`` with ``BENCH_BARE_BROKER`` set to the kombu URL
of the benchmark's Redis (``redis+socket:///path/redis.sock``); the benchmark process calls
:func:`configure` instead. Settings mirror what matters in taskplatform's own
(``taskplatform.config.celery_config``): JSON only, ``acks_late``, reject on worker lost,
prefetch multiplier 4, the result backend on the same Redis. Task events are off unless
``BENCH_BARE_EVENTS=1`` (taskplatform turns them on); kombu's Redis channel builds a client
object per command unless ``BENCH_BARE_REUSE_CLIENTS=1`` (taskplatform.transport's fix).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

import bench.measure  # noqa: F401 - the publish-size probe (inactive unless BENCH_MEASURE_REDIS)

QUEUE = "bare"

app = Celery("bare", set_as_current=False)


def configure(broker_url: str, *, events: bool = False) -> Celery:
    """Point the app at ``broker_url`` (a kombu redis:// or redis+socket:// URL)."""
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        task_default_queue=QUEUE,
        task_default_exchange=QUEUE,
        task_default_routing_key=QUEUE,
        worker_send_task_events=events,
        task_send_sent_event=events,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    return app


if os.environ.get("BENCH_BARE_BROKER"):
    configure(os.environ["BENCH_BARE_BROKER"], events=os.environ.get("BENCH_BARE_EVENTS") == "1")
if os.environ.get("BENCH_BARE_REUSE_CLIENTS") == "1":  # bench.py --bare-reuse-clients
    from taskplatform.transport import reuse_redis_clients

    reuse_redis_clients()


@app.task(name="bare.noop")
def noop(*args: Any) -> dict[str, Any]:
    """Do nothing; return a small dict with the time the task ran (for dispatch latency)."""
    return {"ok": 1, "t": round(time.time(), 6)}
