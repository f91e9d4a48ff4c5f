"""Signal receivers that turn Celery and engine events into audit events.

Celery task signals: ``task_prerun`` (start time), ``task_retry`` (an attempt that will be
retried, or a deferral; from the main process, with Celery 5.7's ``task_retry_on_worker_lost``,
an attempt whose pool child died), ``task_failure`` (an error that escaped the step runtime,
including the main-process failure for hard time limits), ``task_revoked``, ``task_success``
(a final status no ``step_settled`` reported). Engine signals: ``step_started``,
``step_settled`` (every final status, also for steps that never ran), ``run_submitted``,
``run_finished``, ``run_resumed``. Every value is masked with :func:`taskplatform.secrets.redact`
before it is spooled. Receivers are module-level (Celery holds weak references otherwise) and
never raise: a failure is logged and counted (:func:`failure_count`). Worker start and stop
(schema check, log masking, the audit writer process) live in :mod:`.lifecycle`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery
from celery import signals as celery_signals

from taskplatform import defaults, secrets, signals
from taskplatform.audit import db
from taskplatform.audit.events import RETRYING, STARTED, bounded
from taskplatform.audit.spool import AuditSink, sink_for

log = logging.getLogger(__name__)

_failures = 0
_failures_lock = threading.Lock()
_local = threading.local()  # task ids whose final status step_settled already reported
EXECUTED = {"succeeded", "failed", "dead_lettered", "revoked", "canceled"}


def failure_count() -> int:
    """How many times an audit receiver failed in this process."""
    return _failures


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        global _failures
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - Celery would swallow it silently; count it instead
            with _failures_lock:
                _failures += 1
            log.exception("audit handler %s failed", fn.__name__)

    return wrapper


# --- where to write ---------------------------------------------------------------------------


def engine_of(sender: Any) -> Any:
    from taskplatform.engine import Engine, engine_for  # noqa: PLC0415

    if isinstance(sender, Engine):
        return sender
    if isinstance(sender, Celery):
        return engine_for(sender)
    engine = getattr(sender, "engine", None)  # a Client
    if isinstance(engine, Engine):
        return engine
    app = getattr(sender, "app", None)  # a task
    if isinstance(app, Celery):
        return engine_for(app)
    from celery import current_app  # noqa: PLC0415 - a sender we do not know: the current app

    return engine_for(current_app._get_current_object())


def sink_of(engine: Any, *, sweep: bool = False) -> AuditSink | None:
    """The audit sink of an engine's settings; None when the audit is off."""
    if engine is None or not engine.settings.audit:
        return None
    sink = engine.__dict__.get("_audit_sink")  # engines are per process: so is this cache
    if sink is None or sweep:
        settings = engine.settings
        sink = sink_for(db.database_url(settings.database_url), settings.redis_url,
                        prefix=settings.key_prefix, sweep=sweep)
        engine.__dict__["_audit_sink"] = sink
    return sink


def _step_args(args: Any) -> tuple[str, str] | None:
    if isinstance(args, list | tuple) and len(args) == 2 and all(isinstance(a, str) for a in args):
        return args[0], args[1]
    return None


def _is_step_task(task: Any) -> bool:
    return str(getattr(task, "name", "")).startswith("connectors.")


def _ts(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _attempt_event(engine: Any, run_id: str, step_id: str, status: str, detail: dict[str, Any],
                   **extra: Any) -> dict[str, Any]:
    spec = engine.run_spec(run_id)
    step = spec.flow.steps.get(step_id) if spec is not None else None
    plan_step = spec.plan.steps.get(step_id) if spec is not None else None
    run = spec.run if spec is not None else {}
    started, finished = _ts(detail.get("started_at")), _ts(detail.get("finished_at"))
    took_ms = detail.get("duration_ms")
    if took_ms is None and started is not None and status not in (STARTED,):
        took_ms = round(((finished or time.time()) - started) * 1000, 3)
    attempt = int(detail.get("attempts") or 0) if detail.get("task_id") else 0
    event = {
        "kind": "attempt", "at": time.time(), "run_id": run_id, "step_id": step_id,
        "attempt": attempt, "attempts": attempt, "task_id": detail.get("task_id") or "",
        "status": status, "handler": step.uses if step is not None else None,
        "execution_mode": _mode(engine, step, plan_step),
        "queue": detail.get("queue") or (plan_step.queue if plan_step is not None else None),
        "worker_id": detail.get("worker"), "tenant_id": run.get("tenant_id"),
        "correlation_id": run.get("correlation_id"),
        "error_message": secrets.redact_text(detail["error"]) if detail.get("error") else
        (detail.get("reason") if status not in EXECUTED | {STARTED} else None),
        "error_type": detail.get("error_type"), "execution_time_ms": took_ms,
    }
    if status == STARTED:  # the detail still holds the previous attempt's error
        event.update(error_message=None, error_type=None)
    if plan_step is not None and status == STARTED:
        event["expires_at"] = time.time() + plan_step.time_limit_s + defaults.AUDIT_ABANDON_MARGIN_S
    event.update(extra)
    return event


def _mode(engine: Any, step: Any, plan_step: Any) -> str | None:
    if step is None:
        return None
    try:
        connector = engine.registry.get(step.uses)
    except Exception:  # noqa: BLE001 - an unknown action still gets its row
        return None
    return _connector_mode(connector, plan_step)


def _connector_mode(connector: Any, plan_step: Any = None) -> str:
    """sync, async or cpu: the connector's mode; a step sent to the cpu queue runs as cpu."""
    mode = str(connector.execution_mode)
    if mode == "sync" and plan_step is not None and plan_step.queue == defaults.QUEUE_CPU:
        return "cpu"
    return mode


def _emit(engine: Any, event: dict[str, Any]) -> None:
    sink = sink_of(engine)
    if sink is not None:
        sink.emit(event)


# --- engine signals ---------------------------------------------------------------------------


@guarded
def on_run_submitted(sender: Any = None, run_id: str = "", flow: str = "",
                     spec: dict[str, Any] | None = None, **_: Any) -> None:
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return
    spec = spec or {}
    run = spec.get("run", {})
    _emit(engine, {
        "kind": "run_submitted", "at": time.time(), "run_id": run_id, "flow_id": flow,
        "tenant_id": run.get("tenant_id"), "user_id": run.get("user_id"),
        "correlation_id": run.get("correlation_id"),
        "input_data": secrets.redact(spec.get("inputs")),
        "execution_context": secrets.redact(spec),  # whole: the run can be re-driven from it
    })


@guarded
def on_run_finished(sender: Any = None, run_id: str = "", status: str = "", outputs: Any = None,
                    error: str | None = None, **_: Any) -> None:
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return
    spec = engine.run_spec(run_id)
    failed_step = engine.store.run_state(run_id).get("failed_step") if status != "succeeded" else None
    output_data, _cut = bounded(secrets.redact(outputs))
    _emit(engine, {
        "kind": "run_finished", "at": time.time(), "run_id": run_id, "status": status,
        "flow_id": spec.flow.name if spec is not None else None, "output_data": output_data,
        "error_message": secrets.redact_text(error) if error else None, "failed_step": failed_step,
    })


@guarded
def on_run_resumed(sender: Any = None, run_id: str = "", steps: Any = None, **_: Any) -> None:
    engine = engine_of(sender)
    _emit(engine, {"kind": "run_resumed", "at": time.time(), "run_id": run_id,
                   "steps": list(steps or [])})


@guarded
def on_step_started(sender: Any = None, run_id: str = "", step_id: str = "", attempt: int = 0,
                    detail: dict[str, Any] | None = None, inputs: Any = None, connector: Any = None,
                    **_: Any) -> None:
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return
    detail = detail or {}
    input_data, _cut = bounded(secrets.redact(inputs))
    event = _attempt_event(engine, run_id, step_id, STARTED, detail, input_data=input_data)
    event["attempt"] = event["attempts"] = int(attempt)
    spec = engine.run_spec(run_id)
    if connector is not None and spec is not None:
        event["execution_mode"] = _connector_mode(connector, spec.plan.steps.get(step_id))
    _emit(engine, event)


@guarded
def on_step_settled(sender: Any = None, run_id: str = "", step_id: str = "", status: str = "",
                    detail: dict[str, Any] | None = None, **_: Any) -> None:
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return
    detail = detail or {}
    extra: dict[str, Any] = {}
    if status == "succeeded":  # the drainer reads it from Redis, off the step's path
        extra["output_key"] = engine.store.key(defaults.KEY_RUN_OUTPUTS, run_id)
    _emit(engine, _attempt_event(engine, run_id, step_id, status, detail, **extra))
    if detail.get("task_id"):
        _settled_ids().add(detail["task_id"])


def _settled_ids() -> set[str]:
    ids = getattr(_local, "settled", None)
    if ids is None:
        ids = _local.settled = set()
    return ids


# --- Celery task signals ----------------------------------------------------------------------


def _audited_step(sender: Any, args: Any) -> tuple[Any, tuple[str, str]] | None:
    """(engine, (run_id, step_id)) when ``sender`` ran a step of a flow with the audit on."""
    ids = _step_args(args)
    if not _is_step_task(sender) or ids is None:
        return None
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return None
    return engine, ids


@guarded
def on_task_prerun(sender: Any = None, task_id: str = "", task: Any = None, **_: Any) -> None:
    _settled_ids().discard(task_id)


@guarded
def on_task_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    """A final status the runtime returned without a step_settled here (another settle path)."""
    if not _is_step_task(sender) or not isinstance(result, dict):
        return
    request = sender.request
    ids = _step_args(request.args)
    status = result.get("status")
    if ids is None or result.get("duplicate") or status in (None, "lost", "skipped"):
        return
    if request.id in _settled_ids():
        _settled_ids().discard(request.id)
        return
    engine = engine_of(sender)
    if sink_of(engine) is None:
        return
    detail = engine.store.step_detail(*ids)
    if detail.get("task_id") == request.id and detail.get("status") == status:
        _emit(engine, _attempt_event(engine, ids[0], ids[1], status, detail))


@guarded
def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    found = _audited_step(sender, getattr(request, "args", None))
    if found is None:
        return
    engine, ids = found
    detail = engine.store.step_detail(*ids)
    if detail.get("task_id") != request.id:
        return  # a duplicate turned away by the lease: no attempt of its own
    status = detail.get("status")
    lost = getattr(reason, "exc", None)
    if status == "running" and isinstance(lost, WorkerLostError):
        # Celery 5.7's main process (task_retry_on_worker_lost): the pool child running this
        # attempt died (kill -9, OOM). The attempt ends here; the retry gets a row of its own.
        detail = {**detail, "error": f"{type(lost).__name__}: {lost}", "error_type": type(lost).__name__}
        _emit(engine, _attempt_event(engine, ids[0], ids[1], "failed", detail))
    elif status == RETRYING:
        _emit(engine, _attempt_event(engine, ids[0], ids[1], RETRYING, detail))
    elif status == "waiting":  # a deferral: the attempt goes on; push its deadline out
        event = _attempt_event(engine, ids[0], ids[1], STARTED, detail)
        event["expires_at"] = (event.get("expires_at") or time.time()) + engine.settings.max_countdown_s
        _emit(engine, event)


@guarded
def on_task_failure(sender: Any = None, task_id: str = "", exception: BaseException | None = None,
                    args: Any = None, **_: Any) -> None:
    """An error escaped the runtime: Redis trouble, a lost child, a hard time limit."""
    found = _audited_step(sender, args)
    if found is None:
        return
    engine, ids = found
    detail = dict(engine.store.step_detail(*ids))
    if detail.get("status") in EXECUTED | {"skipped", "upstream_failed"}:
        return  # the step settled before the failure: its row is written
    detail.setdefault("task_id", task_id)
    message = f"{type(exception).__name__}: {exception}" if exception is not None else "failed"
    detail.update(error=message, error_type=type(exception).__name__ if exception else None)
    _emit(engine, _attempt_event(engine, ids[0], ids[1], "failed", detail))


@guarded
def on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                    **_: Any) -> None:
    found = _audited_step(sender, getattr(request, "args", None))
    if found is None:
        return
    engine, ids = found
    detail = dict(engine.store.step_detail(*ids))
    detail["task_id"] = request.id
    detail.setdefault("attempts", 0)
    detail["error"] = "revoked (terminated)" if terminated else "revoked"
    detail["error_type"] = "Revoked"
    _emit(engine, _attempt_event(engine, ids[0], ids[1], "revoked", detail))


_connected = False


def connect() -> None:
    """Connect every receiver (idempotent; strong references)."""
    from taskplatform.audit import lifecycle  # noqa: PLC0415 - it imports helpers from here

    global _connected
    if _connected:
        return
    _connected = True
    pairs: list[tuple[Any, Callable[..., None]]] = [
        (signals.run_submitted, on_run_submitted),
        (signals.run_finished, on_run_finished),
        (signals.run_resumed, on_run_resumed),
        (signals.step_started, on_step_started),
        (signals.step_settled, on_step_settled),
        (celery_signals.task_prerun, on_task_prerun),
        (celery_signals.task_success, on_task_success),
        (celery_signals.task_retry, on_task_retry),
        (celery_signals.task_failure, on_task_failure),
        (celery_signals.task_revoked, on_task_revoked),
        (celery_signals.worker_init, lifecycle.on_worker_init),
        (celery_signals.worker_ready, lifecycle.on_worker_ready),
        (celery_signals.worker_process_init, lifecycle.on_pool_child_init),
        (celery_signals.celeryd_after_setup, lifecycle.on_process_init),
        (celery_signals.worker_process_shutdown, lifecycle.on_shutdown),
        (celery_signals.worker_shutdown, lifecycle.on_shutdown),
    ]
    for signal, receiver in pairs:
        signal.connect(receiver, weak=False, dispatch_uid=f"taskplatform.audit.{receiver.__name__}"
                       f".{getattr(signal, 'name', '')}")
