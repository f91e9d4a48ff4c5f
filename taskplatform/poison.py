"""Poison messages: bodies no task can run. The worker logs one line, counts and keeps them.

Celery's consumer survives most of them (it acks undecodable bodies and rejects unknown task
names) but logs the whole body, secrets included, and keeps no trace. This consumer records
each one as a ``poison`` dead letter (masked, truncated) with a per-queue counter, and logs a
single line. Wrong arguments for a connector task are caught in the task itself
(:mod:`taskplatform.runtime`).

One poison kills a stock worker: an item in a queue's Redis list that is not a JSON kombu
envelope (kombu 5.7's ``Channel._brpop_read`` raises JSONDecodeError into the event loop,
"Unrecoverable error", and the worker exits). :func:`guard_redis_transport` catches it at
the transport, records the raw item as a poison dead letter of its queue, and goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.worker.consumer.consumer import Consumer
from kombu.transport import redis as kombu_redis

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


class _PoisonItem(Exception):
    def __init__(self, raw: str, reason: str) -> None:
        super().__init__(reason)
        self.raw, self.reason = raw, reason


_real_loads = kombu_redis.loads
_app: Any = None


_reading = threading.local()  # set while a queue item is decoded (not unacked restores etc.)


def _guarded_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
    if not getattr(_reading, "on", False):
        return _real_loads(text, *args, **kwargs)
    _reading.last = text
    try:
        value = _real_loads(text, *args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise _PoisonItem(str(text), f"undecodable body: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("properties"), dict):
        raise _PoisonItem(str(text), "not a kombu message envelope")
    return value


def _record_raw(channel: Any, queue: str | None, item: _PoisonItem) -> None:
    class _Raw:  # what record() reads from a message
        delivery_info = {"routing_key": queue}
        body = item.raw
        headers = None

    record(_app, _Raw(), item.reason)


def _popped_from(channel: Any) -> str | None:
    # _brpop_read rotates the queue it popped from to the end of its cycle before decoding.
    items = getattr(channel._queue_cycle, "items", None) or [None]
    return items[-1]


def guard_redis_transport(app: Any) -> None:
    """Make kombu's Redis channel dead-letter undecodable list items instead of dying."""
    global _app
    _app = app
    if getattr(kombu_redis.Channel, "_taskplatform_guarded", False):
        return
    brpop_read, get = kombu_redis.Channel._brpop_read, kombu_redis.Channel._get

    def _brpop_read(self: Any, **options: Any) -> Any:
        _reading.on, _reading.last = True, None
        try:
            return brpop_read(self, **options)
        except _PoisonItem as item:
            _record_raw(self, _popped_from(self), item)
            return True
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if _reading.last is None:  # not from an item we popped: not ours to handle
                raise
            # A JSON envelope kombu cannot turn into a message (bad body encoding, ...).
            _record_raw(self, _popped_from(self), _PoisonItem(
                str(_reading.last), f"malformed message envelope: {type(exc).__name__}: {exc}"))
            return True
        finally:
            _reading.on, _reading.last = False, None

    def _get(self: Any, queue: str) -> Any:
        _reading.on = True
        try:
            return get(self, queue)
        except _PoisonItem as item:
            _record_raw(self, queue, item)
            raise kombu_redis.Empty() from None
        finally:
            _reading.on = False

    kombu_redis.loads = _guarded_loads
    kombu_redis.Channel._brpop_read = _brpop_read
    kombu_redis.Channel._get = _get
    kombu_redis.Channel._taskplatform_guarded = True


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with poison messages dead-lettered instead of dumped to the log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard_redis_transport(self.app)

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
