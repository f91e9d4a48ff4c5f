"""Celery settings built from our typed settings (``celeryconfig.py`` exposes them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from kombu import Exchange, Queue

from taskplatform import defaults
from taskplatform.errors import ConfigError
from taskplatform.settings import Settings


def broker_url_for(redis_url: str) -> str:
    """Our Redis URL as kombu wants it: ``unix:///p?db=N`` -> ``redis+socket:///p?virtual_host=N``."""
    parts = urlsplit(redis_url)
    if parts.scheme in ("redis", "rediss", "redis+socket"):
        return redis_url
    if parts.scheme == "unix":
        query = parse_qs(parts.query)
        db = query.pop("db", [None])[0]
        if db is not None:
            query["virtual_host"] = [db]
        q = f"?{urlencode(query, doseq=True)}" if query else ""
        return f"redis+socket://{parts.path}{q}"
    raise ConfigError(f"REDIS_URL must be redis://, rediss:// or unix://, got scheme {parts.scheme!r}")


def client_url_for(redis_url: str) -> str:
    """Our Redis URL as redis-py wants it (the inverse of :func:`broker_url_for`)."""
    parts = urlsplit(redis_url)
    if parts.scheme == "redis+socket":
        query = parse_qs(parts.query)
        db = query.pop("virtual_host", [None])[0]
        if db is not None:
            query["db"] = [db]
        q = f"?{urlencode(query, doseq=True)}" if query else ""
        return f"unix://{parts.path}{q}"
    return redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting we rely on, as a dict for ``config_from_object``."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set (and the embedded Redis was not started)")
    broker = broker_url_for(settings.redis_url)
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.key_prefix:
        transport["global_keyprefix"] = settings.key_prefix  # broker and backend alike (kombu #1349)
    return {
        "broker_url": broker,
        "result_backend": broker,
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        # JSON only: with pickle accepted, write access to the broker is code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At least once: ack after the task, requeue when the worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Celery 5.7: a lost worker re-sends the task as a retry, capped by max_retries, so a
        # step that crashes its process cannot requeue itself forever (our leases then cap
        # attempts: a step whose process died max_attempts times is dead-lettered).
        "task_retry_on_worker_lost": True,
        # Prefetch 1 per process: steps are long and acks are late, so prefetched messages
        # would sit behind a slow step (and come back only after the visibility timeout if
        # the worker dies). Raise it for io workers with `--prefetch-multiplier`.
        "worker_prefetch_multiplier": 1,
        "worker_consumer": "taskplatform.poison:PoisonAwareConsumer",
        # Recovery sweep (taskplatform/recovery.py), on the plan queue; run `celery -A taskplatform beat`.
        "beat_schedule": {
            "taskplatform-recover": {
                "task": "taskplatform.recover",
                "schedule": settings.recovery_interval_s,
                "options": {"queue": defaults.QUEUE_PLAN, "expires": settings.recovery_interval_s},
            },
        },
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in defaults.QUEUES],
        "task_default_queue": defaults.QUEUE_IO,
        "task_default_exchange": defaults.QUEUE_IO,
        "task_default_routing_key": defaults.QUEUE_IO,
        # So that Flower and exporters see tasks.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": 24 * 3600,
        "worker_hijack_root_logger": False,
        "taskplatform_settings": settings.model_dump(mode="json"),
    }
