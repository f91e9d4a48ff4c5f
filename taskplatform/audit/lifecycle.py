"""Worker start and stop for the audit: schema check, log masking, the audit writer process.

``worker_init`` (main process, before the pool): refuse to start on an outdated schema.
``worker_ready`` (main process of ``celery worker``): start the audit writer process
(:mod:`.drainer`); the main process and the pool then only spool. ``worker_process_init``
(pool children): spool only, mask logs. ``worker_shutdown``: stop the writer, flush.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from celery import Celery

from taskplatform import secrets
from taskplatform.audit import db
from taskplatform.audit.handlers import engine_of, guarded
from taskplatform.audit.spool import close_sinks

log = logging.getLogger(__name__)



def on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: mask logs, and refuse an outdated schema."""
    from taskplatform.errors import AuditSchemaError, BackendError  # noqa: PLC0415

    secrets.install_log_redaction()
    app = getattr(sender, "app", None)
    if not isinstance(app, Celery):
        return
    try:
        engine = engine_of(app)
    except Exception:  # noqa: BLE001 - an unconfigured app is reported by the engine itself
        return
    if engine is None or not engine.settings.audit:
        return
    try:
        db.check_schema(db.database_url(engine.settings.database_url))
    except AuditSchemaError as exc:
        log.critical("%s", exc)
        raise SystemExit(f"taskplatform worker: {exc}") from None
    except BackendError as exc:
        log.warning("audit database not reachable at start (%s); events are spooled until it is",
                    exc)


_drainer: subprocess.Popen[bytes] | None = None
_drainer_owner = 0  # the pid that started it: a pool child forked later must not stop it


@guarded
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Main process of ``celery worker``: start the audit writer process (see drainer.py)."""
    global _drainer, _drainer_owner
    from taskplatform.audit import drainer, spool  # noqa: PLC0415
    from taskplatform.embedded import _die_with_parent  # noqa: PLC0415

    app = getattr(sender, "app", None)
    engine = engine_of(app) if isinstance(app, Celery) else None
    if engine is None or not engine.settings.audit or _drainer is not None:
        return
    spool.DRAIN_IN_THIS_PROCESS = False  # the main process feeds the pool; it only spools
    settings = engine.settings
    cfg = {"url": db.database_url(settings.database_url), "redis_url": settings.redis_url,
           "prefix": settings.key_prefix, "spool_max": settings.audit_spool_max_events,
           "overflow_dir": str(settings.overflow_dir)}
    _drainer = subprocess.Popen(
        [sys.executable, "-m", "taskplatform.audit.drainer"],
        env={**os.environ, drainer.ENV: json.dumps(cfg)}, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    _drainer_owner = os.getpid()


def _stop_drainer() -> None:
    global _drainer
    if _drainer_owner != os.getpid():
        return
    proc, _drainer = _drainer, None
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # it writes what is spooled (a few seconds at most), then exits
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def on_process_init(**_: Any) -> None:
    secrets.install_log_redaction()


def on_pool_child_init(**_: Any) -> None:
    """A prefork child: spool only; the main process drains (see spool.DRAIN_IN_THIS_PROCESS)."""
    from taskplatform.audit import spool  # noqa: PLC0415

    spool.DRAIN_IN_THIS_PROCESS = False
    secrets.install_log_redaction()


@guarded
def on_shutdown(**_: Any) -> None:
    _stop_drainer()
    close_sinks(flush_s=5.0)
