"""Signal handlers that feed the metrics and the log context, in whatever process runs a step.

Two sources, because neither alone tells the truth: Celery's ``task_prerun``/``task_postrun``
time each delivery, but the step runtime catches a step's error and returns ``{"status":
"failed"}`` (a Celery *success*) and turns retries and waits into ``task.retry()``; the
engine's own signals (``step_settled``, ``run_finished``, ...) say how each step and run
ended, exactly once across all processes. So: durations and active tasks from Celery,
outcomes from the engine.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_prerun

from connectors.base import default_registry
from taskplatform import logs, signals
from taskplatform.metrics import metrics

log = logging.getLogger(__name__)

TASK_PREFIX = "connectors."
FAILED = ("failed", "dead_lettered")

_started: dict[str, tuple[float, Any]] = {}  # task_id -> (perf_counter at start, log token)
_modes: dict[str, str] = {}


def handler_of(task_name: str) -> str | None:
    """``connectors.http.request`` -> ``http.request``; None for tasks that are not actions."""
    return task_name[len(TASK_PREFIX):] if task_name.startswith(TASK_PREFIX) else None


def mode_of(handler: str) -> str:
    """``sync``, ``async`` or ``cpu``: how the action runs."""
    mode = _modes.get(handler)
    if mode is None:
        connector = default_registry().actions.get(handler)
        mode = connector.execution_mode if connector is not None else "unknown"
        _modes[handler] = mode
    return mode


def _step_ids(args: Any, kwargs: Any) -> tuple[str, str] | None:
    if not kwargs and args and len(args) == 2 and all(isinstance(a, str) for a in args):
        return args[0], args[1]
    return None


def _queue_of(task: Task) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return info.get("routing_key") or getattr(task, "queue", None) or "unknown"


def _spec_of(sender: Any, run_id: str) -> Any:
    engine = getattr(sender, "engine", sender)
    run_spec = getattr(engine, "run_spec", None)
    return run_spec(run_id) if run_spec is not None else None


def _hook_failed(hook: str) -> None:
    log.warning("metrics hook %s failed", hook, exc_info=True)
    try:
        metrics().hook_errors.labels(hook=hook).inc()
    except Exception:  # noqa: BLE001 - never let bookkeeping break a task
        pass


# --- Celery: per delivery ----------------------------------------------------------------------


@task_prerun.connect
def before_task(sender: Task | None = None, task_id: str = "", task: Task | None = None,
                args: Any = None, kwargs: Any = None, **_: Any) -> None:
    task = task or sender
    if task is None or (handler := handler_of(task.name)) is None:
        return
    token = None
    try:
        queue = _queue_of(task)
        m = metrics()
        m.active_tasks.labels(handler=handler, queue=queue).inc()
        if not task.request.retries:
            m.tasks_scheduled.labels(handler=handler, queue=queue).inc()
        ids = _step_ids(args, kwargs)
        if ids is not None:
            token = logs.bind_step(**_log_fields(task, *ids))
    except Exception:  # noqa: BLE001
        _hook_failed("task_prerun")
    _started[task_id] = (time.perf_counter(), token)


def _log_fields(task: Task, run_id: str, step_id: str) -> dict[str, Any]:
    from taskplatform.engine import engine_for  # noqa: PLC0415 - engine needs the app configured

    fields: dict[str, Any] = {"run_id": run_id, "step_id": step_id}
    try:
        spec = engine_for(task.app).run_spec(run_id)  # cached: the runtime reads the same spec
    except Exception:  # noqa: BLE001 - the runtime reports a missing spec itself
        spec = None
    if spec is not None:
        fields.update(flow=spec.flow.name, tenant_id=spec.run.get("tenant_id"),
                      correlation_id=spec.run.get("correlation_id"))
    return fields


@task_postrun.connect
def after_task(sender: Task | None = None, task_id: str = "", task: Task | None = None,
               args: Any = None, kwargs: Any = None, retval: Any = None, state: str | None = None,
               **_: Any) -> None:
    task = task or sender
    if task is None or (handler := handler_of(task.name)) is None:
        return
    started, token = _started.pop(task_id, (None, None))
    try:
        m = metrics()
        queue, mode = _queue_of(task), mode_of(handler)
        m.active_tasks.labels(handler=handler, queue=queue).dec()
        ids = _step_ids(args, kwargs)
        if ids is not None:
            status = _step_attempt_status(task, ids, state, retval, handler, mode, queue)
        else:
            status = _standalone_status(state, retval, handler, mode, queue)
        if started is not None:
            m.task_duration.labels(handler=handler, mode=mode, queue=queue, status=status).observe(
                time.perf_counter() - started)
    except Exception:  # noqa: BLE001
        _hook_failed("task_postrun")
    finally:
        if token is not None:
            logs.unbind_step(token)


def _step_attempt_status(task: Task, ids: tuple[str, str], state: str | None, retval: Any,
                         handler: str, mode: str, queue: str) -> str:
    """How this delivery of a step ended: succeeded, failed, skipped, retrying, waiting, ..."""
    if state == "SUCCESS" and isinstance(retval, dict):
        return "duplicate" if retval.get("duplicate") else str(retval.get("status", "unknown"))
    if state == "RETRY":
        # A retry, a wait hop or a duplicate turned away by a lease: the step's record says which.
        from taskplatform.engine import engine_for  # noqa: PLC0415

        detail = engine_for(task.app).store.step_detail(*ids)
        status = detail.get("status", "unknown")
        if status == "retrying":
            metrics().task_retry.labels(handler=handler, mode=mode, queue=queue,
                                        error_type=detail.get("error_type", "unknown")).inc()
            return "retrying"
        return "waiting" if status == "waiting" else "busy"
    return "error"  # the runtime itself raised (Redis away, ...): Celery logs it


def _standalone_status(state: str | None, retval: Any, handler: str, mode: str, queue: str) -> str:
    m = metrics()
    if state == "SUCCESS":
        m.task_success.labels(handler=handler, mode=mode, queue=queue).inc()
        return "succeeded"
    if state == "RETRY":
        exc = getattr(retval, "exc", None)
        if exc is None:
            return "waiting"
        m.task_retry.labels(handler=handler, mode=mode, queue=queue, error_type=type(exc).__name__).inc()
        return "retrying"
    exc = getattr(retval, "exception", retval)
    m.task_failure.labels(handler=handler, mode=mode, queue=queue, error_type=type(exc).__name__).inc()
    return "failed"


# --- the engine: outcomes, once per step and run -------------------------------------------------


@signals.step_settled.connect
def on_step_settled(sender: Any = None, run_id: str = "", step_id: str = "", status: str = "",
                    detail: dict[str, Any] | None = None, **_: Any) -> None:
    try:
        detail = detail or {}
        spec = _spec_of(sender, run_id)
        plan_step = spec.plan.steps[step_id] if spec is not None else None
        handler = plan_step.action if plan_step is not None else "unknown"
        queue = detail.get("queue") or (plan_step.queue if plan_step is not None else "unknown")
        mode = mode_of(handler)
        m = metrics()
        m.tasks_completed.labels(handler=handler, status=status).inc()
        if status == "succeeded":
            m.task_success.labels(handler=handler, mode=mode, queue=queue).inc()
        elif status in FAILED:
            error_type = detail.get("error_type") or "unknown"
            m.task_failure.labels(handler=handler, mode=mode, queue=queue, error_type=error_type).inc()
            if status == "dead_lettered":
                m.task_dead_letter.labels(handler=handler, mode=mode, queue=queue,
                                          error_type=error_type).inc()
    except Exception:  # noqa: BLE001
        _hook_failed("step_settled")


@signals.run_finished.connect
def on_run_finished(sender: Any = None, run_id: str = "", status: str = "", **_: Any) -> None:
    try:
        spec = _spec_of(sender, run_id)
        flow = spec.flow.name if spec is not None else "unknown"
        m = metrics()
        m.runs_processed.labels(flow=flow, status=status).inc()
        created = (spec.run.get("created_at") if spec is not None else None)
        if created:
            elapsed_s = time.time() - datetime.fromisoformat(created).timestamp()
            m.run_execution.labels(flow=flow, status=status).observe(max(0.0, elapsed_s))
    except Exception:  # noqa: BLE001
        _hook_failed("run_finished")


@signals.run_submitted.connect
def on_run_submitted(sender: Any = None, flow: str = "", **_: Any) -> None:
    try:
        metrics().runs_submitted.labels(flow=flow or "unknown").inc()
    except Exception:  # noqa: BLE001
        _hook_failed("run_submitted")


@signals.run_resumed.connect
def on_run_resumed(sender: Any = None, run_id: str = "", **_: Any) -> None:
    try:
        spec = _spec_of(sender, run_id)
        metrics().runs_resumed.labels(flow=spec.flow.name if spec is not None else "unknown").inc()
    except Exception:  # noqa: BLE001
        _hook_failed("run_resumed")
