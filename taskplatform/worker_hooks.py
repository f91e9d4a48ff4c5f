"""What ``celery -A taskplatform worker`` does on start and stop, beyond Celery's own work.

- ``celeryd_init`` (main process, before the pool forks): multiprocess metrics folder set and
  emptied before prometheus_client is imported; health checks registered.
- ``setup_logging``: our formatter (JSON or text, secrets masked) on the root logger.
- ``worker_ready``: ``/metrics`` and ``/health`` served from the main process.
- ``worker_process_shutdown`` (each pool child): its live gauges dropped.

Nothing here runs at import: the handlers only fire in a worker started by Celery's CLI.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from taskplatform import defaults, health
from taskplatform.health import FAILING, OK, CheckResult

log = logging.getLogger(__name__)


class _WorkerState:
    settings: Any = None
    ready = False
    shutting_down = False
    server: Any = None
    consumer: Any = None


state = _WorkerState()


def _settings_from(conf: Any) -> Any:
    from taskplatform.settings import Settings, load_settings  # noqa: PLC0415

    raw = conf.get("taskplatform_settings") if conf is not None else None
    return Settings.model_validate(raw) if raw else load_settings()


@celeryd_init.connect
def on_worker_init(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    settings = state.settings = _settings_from(conf)
    if settings.metrics_port:
        _enable_multiprocess_metrics(settings.metrics_dir)
        from connectors.base import default_registry  # noqa: PLC0415
        from taskplatform.metrics import metrics  # noqa: PLC0415 - after the folder is set

        gauge = metrics().connector_load
        for label, seconds in default_registry().load_seconds.items():
            gauge.labels(connector=label).set(seconds)
    register_health_checks(settings)


def _enable_multiprocess_metrics(configured: Path | None) -> None:
    from taskplatform.metrics import enable_multiprocess  # noqa: PLC0415 - imports no prometheus

    if configured is not None:
        enable_multiprocess(Path(configured))
        return
    remove_stale_metrics_dirs()
    path = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))
    enable_multiprocess(path)
    main_pid = os.getpid()
    # Only the main process removes the folder (pool children run atexit too).
    atexit.register(lambda: os.getpid() == main_pid and shutil.rmtree(path, ignore_errors=True))


METRICS_DIR_PREFIX = "taskplatform-metrics-"


def remove_stale_metrics_dirs(root: Path | None = None) -> list[Path]:
    """Remove the metrics folders of workers that died without cleaning up (kill -9).

    A folder is named after its worker's main pid; one whose process is gone is removed.
    """
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        try:
            pid = int(path.name[len(METRICS_DIR_PREFIX):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except PermissionError:
            continue  # alive, someone else's
    return removed


def register_health_checks(settings: Any) -> None:
    """broker (Redis PING), database (SELECT 1 on the audit's) and worker (consuming)."""
    if settings.redis_url:
        health.register("broker", health.redis_check(settings.redis_url))
    health.register("database", health.database_check(settings))
    health.register("worker", worker_check)


def worker_check() -> CheckResult:
    if state.shutting_down:
        return CheckResult(FAILING, "shutting down")
    if not state.ready:
        return CheckResult(FAILING, "not ready: still starting")
    consumer = state.consumer
    queues = sorted(q.name for q in consumer.task_consumer.queues) \
        if consumer is not None and getattr(consumer, "task_consumer", None) is not None else []
    return CheckResult(OK, extra={"hostname": getattr(consumer, "hostname", None), "queues": queues})


@setup_logging.connect
def on_setup_logging(loglevel: Any = None, logfile: str | None = None, **_: Any) -> None:
    from taskplatform.logs import configure_logging  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    configure_logging(log_format=load_settings().log_format, level=loglevel or logging.INFO,
                      logfile=logfile)


@celeryd_after_setup.connect
def on_after_setup(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    # Celery skips redirecting print() to the log when logging is ours; do it, so that what
    # user code prints is formatted and masked like everything else.
    if conf is not None and conf.worker_redirect_stdouts and instance is not None:
        instance.app.log.redirect_stdouts(conf.worker_redirect_stdouts_level)


@worker_ready.connect
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    state.consumer = sender
    state.ready = True
    settings = state.settings
    if settings is None or not settings.metrics_port:
        return
    from taskplatform.metrics import (  # noqa: PLC0415
        ActiveRunsCollector,
        AuditSpoolCollector,
        registry_for_serving,
    )
    from taskplatform.ops_server import OpsServer  # noqa: PLC0415

    collectors: tuple[Any, ...] = ()
    try:
        from taskplatform.engine import Engine  # noqa: PLC0415

        store = Engine(sender.app, settings).store  # its own connection pool, for scrapes
        collectors = (ActiveRunsCollector(store, scan=defaults.ACTIVE_RUNS_SCAN),
                      AuditSpoolCollector(store, settings.overflow_dir if settings.audit else None))
    except Exception:  # noqa: BLE001 - metrics without the run gauge beat no metrics
        log.warning("orchestrator_active_runs disabled", exc_info=True)
    try:
        state.server = OpsServer(settings.metrics_host, settings.metrics_port,
                                 registry=registry_for_serving(collectors),
                                 health=health.run_checks).start()
    except OSError as exc:
        # Another worker on this host holds the port: keep working, say so loudly.
        log.error("metrics and health not served on %s:%s: %s (set EXECUTOR_METRICS_PORT)",
                  settings.metrics_host, settings.metrics_port, exc)
        return
    log.info("metrics on http://%s:%s/metrics, health on /health", settings.metrics_host,
             state.server.port)


@worker_shutting_down.connect
def on_shutting_down(**_: Any) -> None:
    state.shutting_down = True


@worker_process_shutdown.connect
def on_child_exit(pid: int | None = None, **_: Any) -> None:
    from taskplatform.metrics import mark_process_dead  # noqa: PLC0415

    mark_process_dead(pid or os.getpid())
