"""The Celery app: ``celery -A taskplatform worker -Q io,cpu,plan``.

Configuration is read lazily from ``celeryconfig`` (so importing this module reads no
environment and opens no connection); :func:`configure` points the app elsewhere (tests, the
embedded mode).
"""

from __future__ import annotations

from celery import Celery

from connectors.base import default_registry
from taskplatform.config import celery_config
from taskplatform.engine import reset_engine
from taskplatform.settings import Settings


def create_app(main: str = "taskplatform", *, set_as_current: bool = True) -> Celery:
    """A Celery app reading ``celeryconfig``, with every connector action registered."""
    from taskplatform.transport import reuse_redis_clients  # noqa: PLC0415

    reuse_redis_clients()  # kombu's Redis channel, without a new client object per command
    celery_app = Celery(main, set_as_current=set_as_current)
    celery_app.config_from_object("celeryconfig")
    from taskplatform import runtime  # noqa: PLC0415 - runtime imports engine, which needs no app

    runtime.register_connector_tasks(celery_app, default_registry().actions)
    from taskplatform import recovery  # noqa: PLC0415

    recovery.register_tasks(celery_app)
    # Metrics, log context, worker start-up hooks and the audit: signal handlers only, nothing
    # connects or reads the environment now.
    from taskplatform import instrumentation, worker_hooks  # noqa: F401, PLC0415
    from taskplatform.audit import handlers as audit_handlers  # noqa: PLC0415
    from taskplatform.audit import redrive  # noqa: PLC0415

    audit_handlers.connect()
    redrive.register()  # the recovery sweep re-drives runs Redis lost from the audit
    return celery_app


def configure(celery_app: Celery, settings: Settings) -> Celery:
    """Point ``celery_app`` at the Redis (and options) of ``settings``, replacing celeryconfig."""
    celery_app.config_from_object(celery_config(settings), force=True)
    reset_engine(celery_app)
    return celery_app


app = create_app()
