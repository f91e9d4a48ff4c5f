"""Recovery: find runs that should be progressing and are not, and drive them on.

A run can stall when a worker dies (its leased step is never settled, or a dependent it had
made ready was never published), when a message is lost (Redis restart, a crash between
settling a step and publishing its dependents), or when every step settled but the run was
never finished. :func:`recover` looks at each run a :class:`RunSource` names and, from what
Redis holds, re-launches the steps that are stuck and finishes runs that are complete.
Re-launching is always safe: the step's idempotency key turns a duplicate away or makes it
reuse the stored output.

A step of an active run is re-launched when its needs have all settled and:

- its lease expired while it ran (the process that held it died): at once;
- it is ``retrying`` and its retry is overdue by ``stale_after_s``;
- it was never claimed ``stale_after_s`` after it became ready and its queue is empty (its
  message was lost; while the queue holds messages it may just be waiting its turn).

It runs periodically as the ``taskplatform.recover`` task on the ``plan`` queue (celery beat,
every ``TASKPLATFORM_RECOVERY_INTERVAL_S``) and on demand with ``manage.py recover``.

Sources: :class:`RedisRunSource` (runs Redis holds as not yet terminal) is built in. The audit
of record plugs in through :func:`register_run_source` (runs Postgres says are running) and
:func:`register_lost_run_handler` (what to do with a run whose Redis state is gone: re-drive
it from its stored inputs, or mark it failed with a reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from celery import Celery

from taskplatform import defaults, dispatch
from taskplatform.engine import Engine, engine_for
from taskplatform.state import FINAL_STEP_STATUSES, StepStatus

log = logging.getLogger(__name__)

RECOVER_TASK = "taskplatform.recover"
LOCK_KEY = "{prefix}recovery:lock"


class RunSource(Protocol):
    """Names runs that should be progressing."""

    name: str

    def run_ids(self, engine: Engine) -> Iterable[str]: ...


class RedisRunSource:
    """Runs Redis holds as not yet terminal (the ``runs:active`` index)."""

    name = "redis"

    def run_ids(self, engine: Engine) -> Iterable[str]:
        return engine.store.active_runs()


#: A run whose Redis state is gone; the handler re-drives it or records why it cannot.
LostRunHandler = Callable[[Engine, str], None]

_sources: list[RunSource] = [RedisRunSource()]
_lost_run_handlers: list[LostRunHandler] = []


def register_run_source(source: RunSource) -> None:
    """Add a source of runs to check (the Postgres audit's running runs plug in here)."""
    if all(s.name != source.name for s in _sources):
        _sources.append(source)


def register_lost_run_handler(handler: LostRunHandler) -> None:
    """Call ``handler(engine, run_id)`` for each run a source names whose Redis state is gone."""
    if handler not in _lost_run_handlers:
        _lost_run_handlers.append(handler)


@dataclass
class RecoveryReport:
    """What one sweep found and did."""

    checked: int = 0
    relaunched: dict[str, list[str]] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    took_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"checked": self.checked, "relaunched": self.relaunched, "finished": self.finished,
                "lost": self.lost, "took_s": round(self.took_s, 3)}


def recover(engine: Engine, *, stale_after_s: float | None = None,
            sources: Iterable[RunSource] | None = None) -> RecoveryReport:
    """Check every run the sources name and drive on the stuck ones."""
    started = time.monotonic()
    stale = engine.settings.recovery_stale_after_s if stale_after_s is None else stale_after_s
    report = RecoveryReport()
    seen: set[str] = set()
    depths = queue_depths(engine)
    for source in list(sources if sources is not None else _sources):
        for run_id in source.run_ids(engine):
            if run_id in seen:
                continue
            seen.add(run_id)
            report.checked += 1
            try:
                recover_run(engine, run_id, stale, report, depths)
            except Exception:  # noqa: BLE001 - one broken run must not stop the sweep
                log.exception("recovery of run %s failed", run_id)
    report.took_s = time.monotonic() - started
    if report.relaunched or report.finished or report.lost:
        log.warning("recovery: %s", report.as_dict())
    return report


def queue_depths(engine: Engine) -> dict[str, int]:
    """Messages waiting in each work queue (kombu's Redis list per queue)."""
    prefix = engine.settings.key_prefix
    pipe = engine.redis.pipeline(transaction=False)
    for q in defaults.WORK_QUEUES:
        pipe.llen(f"{prefix}{q}")
    return dict(zip(defaults.WORK_QUEUES, (int(n) for n in pipe.execute()), strict=False))


def recover_run(engine: Engine, run_id: str, stale_after_s: float, report: RecoveryReport,
                depths: dict[str, int] | None = None) -> None:
    depths = queue_depths(engine) if depths is None else depths
    store = engine.store
    state = store.run_state(run_id)
    if not state or "run_id" not in state:
        report.lost.append(run_id)
        engine.forget_spec(run_id)
        store.forget_active(run_id)  # before the handlers: one may rebuild the run under this id
        for handler in _lost_run_handlers:
            handler(engine, run_id)
        return
    if state.get("status") in ("succeeded", "failed", "canceled"):
        store.forget_active(run_id)
        return
    spec = engine.run_spec(run_id)
    if spec is None:
        return
    plan = spec.plan
    raw = store.raw_statuses(run_id, plan.order)
    if all(v in FINAL_STEP_STATUSES for v in raw.values()):
        if dispatch.finish(engine, spec):
            report.finished.append(run_id)
        return
    details = store.step_details(run_id)
    marks = store.recovered_at(run_id)
    now = time.time()
    run_since = max(float(state.get(k) or 0) for k in ("created_at", "started_at", "resumed_at"))
    stuck: list[str] = []
    for sid in plan.order:
        value = raw[sid]
        if value in FINAL_STEP_STATUSES or (value or "").startswith("running:"):
            continue
        needs = plan.steps[sid].needs
        if any(raw[n] not in FINAL_STEP_STATUSES for n in needs):
            continue
        detail = details.get(sid, {})
        if value is None and detail.get("status") == StepStatus.RUNNING.value:
            due = float(detail.get("started_at") or 0)  # lease expired: its process died
            grace = 0.0
        elif value == StepStatus.RETRYING.value:
            due, grace = float(detail.get("retry_at") or 0), stale_after_s
        elif value == StepStatus.WAITING.value:
            due, grace = float(detail.get("started_at") or 0) + engine.settings.max_countdown_s, stale_after_s
        else:
            if depths.get(plan.steps[sid].queue, 0) > 0:
                continue  # its message may still be waiting in a backlog: not lost (yet)
            ready_at = max([run_since, *(float(details.get(n, {}).get("finished_at") or 0) for n in needs)])
            due, grace = ready_at, stale_after_s
        if now < due + grace:
            continue
        if now - marks.get(sid, 0.0) < max(stale_after_s, engine.settings.lease_ttl_s):
            continue  # re-launched recently: give that copy its chance
        stuck.append(sid)
    if stuck:
        store.mark_recovered(run_id, stuck)
        report.relaunched[run_id] = stuck
        dispatch.advance(engine, spec, stuck, store.settled_count(run_id))


def register_tasks(app: Celery) -> None:
    """Register ``taskplatform.recover`` (run by celery beat on the ``plan`` queue)."""
    if app.__dict__.get("_taskplatform_recovery"):  # not app.tasks: that would load the config
        return
    app.__dict__["_taskplatform_recovery"] = True

    @app.task(name=RECOVER_TASK, queue=defaults.QUEUE_PLAN, ignore_result=True, shared=False)
    def recover_task() -> dict[str, object]:
        engine = engine_for(app)
        interval = engine.settings.recovery_interval_s
        lock = LOCK_KEY.format(prefix=engine.settings.key_prefix)
        # One sweep at a time across workers; the lock expires if its holder dies.
        if not engine.redis.set(lock, "1", nx=True, ex=max(1, int(interval))):
            return {"skipped": "another sweep is running"}
        try:
            return recover(engine).as_dict()
        finally:
            engine.redis.delete(lock)
