"""Poison messages: bodies no task can run. The worker logs one line, counts and keeps them.

Celery's consumer already survives them (it acks undecodable bodies and rejects unknown task
names) but logs the whole body, secrets included, and keeps no trace. This consumer records
each one as a ``poison`` dead letter (masked, truncated) with a per-queue counter, and logs a
single line. Wrong arguments for a connector task are caught in the task itself
(:mod:`taskplatform.runtime`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.consumer import Consumer

from taskplatform.engine import engine_for

log = logging.getLogger(__name__)


def record(app: Any, message: Any, reason: str) -> None:
    """Keep a poison message as a dead letter and log one line; never raises."""
    queue = None
    try:
        queue = (message.delivery_info or {}).get("routing_key")
        body = getattr(message, "body", None)
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        entry = engine_for(app).dlq.add_poison(queue=queue, reason=reason, body=body,
                                               headers=getattr(message, "headers", None))
        log.error("poison message on %s: %s (dead letter %s)", queue, reason, entry)
    except Exception as exc:  # noqa: BLE001 - the worker must keep serving whatever happens here
        log.error("poison message on %s: %s (not recorded: %s)", queue, reason, exc)


def _ack(message: Any) -> None:
    try:
        message.ack()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not ack a poison message: %s", exc)


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with poison messages dead-lettered instead of dumped to the log."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record(self.app, message, f"undecodable body: {type(exc).__name__}: {exc}")
        _ack(message)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record(self.app, message, "not a task message (no task name)")
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (getattr(message, "headers", None) or {}).get("task")
        record(self.app, message, f"unknown task {name!r}")
        message.reject_log_error(log, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record(self.app, message, f"invalid task message: {type(exc).__name__}: {exc}")
        message.reject_log_error(log, self.connection_errors)
