"""The audit as a recovery source: runs Postgres has as running, re-driven when Redis lost them.

Redis holds a run's live state; the audit holds its frozen spec (``execution_context``) and
every step's latest outcome. When a sweep (:mod:`taskplatform.recovery`) finds a run the audit
says is running but Redis no longer knows (a restart without persistence, a flush), this
module rebuilds the run in Redis under the same run id: the spec, then every step that had
settled, with its stored output, so those steps never run again. Steps that had not settled
run (again: one that was cut off mid-attempt runs a second time, as after any worker loss).
The run then goes on to its end as usual.

It refuses, and records the run ``failed`` with the reason, when it cannot rebuild faithfully:
no frozen spec, a succeeded step whose output was too large to keep in the audit, or a run
older than Redis keeps runs (``TASKPLATFORM_RUN_TTL_S``): that run's state expired, it was not
lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from taskplatform import dispatch, signals
from taskplatform.audit import db, reads
from taskplatform.engine import Engine, RunSpec
from taskplatform.state import FINAL_STEP_STATUSES, RunStatus, StepStatus, dumps

log = logging.getLogger(__name__)


class AuditRunSource:
    """Runs the audit still has as ``running``, of this deployment (``TASKPLATFORM_DEPLOYMENT``)."""

    name = "audit"

    def run_ids(self, engine: Engine) -> Iterable[str]:
        if not engine.settings.audit:
            return []
        url = db.database_url(engine.settings.database_url)
        return [row["run_id"] for row in reads.running_runs(url=url)
                if _deployment(row) == engine.settings.deployment]


def _deployment(row: dict[str, Any]) -> str:
    run_ctx = (row.get("execution_context") or {}).get("run") or {}
    return str(run_ctx.get("deployment") or "default")


def redrive(engine: Engine, run_id: str) -> str:
    """Rebuild a run Redis lost from the audit and drive it on; returns what was done.

    ``"rebuilt"``, ``"failed"`` (recorded with its reason), or ``"skipped"`` (the audit does not
    have it running, or Redis has it again).
    """
    if not engine.settings.audit:
        return "skipped"
    row = reads.load_run(run_id, url=db.database_url(engine.settings.database_url))
    if row is None or row["status"] != RunStatus.RUNNING.value \
            or _deployment(row) != engine.settings.deployment:
        return "skipped"
    context = row.get("execution_context") or {}
    age_s = (datetime.now(UTC) - row["created_at"]).total_seconds()
    if age_s > engine.settings.run_ttl_s:
        return _give_up(engine, run_id, f"its state expired from Redis after {engine.settings.run_ttl_s}s")
    if not context.get("flow"):
        return _give_up(engine, run_id, "Redis lost its state and the audit has no frozen spec to rebuild it")
    settled = _settled_steps(row)
    cut = sorted(sid for sid, r in settled.items()
                 if r["status"] == StepStatus.SUCCEEDED.value and r.get("output_truncated"))
    if cut:
        return _give_up(engine, run_id, "Redis lost its state and the output of step(s) "
                                        f"{', '.join(cut)} was too large for the audit to restore")
    spec = RunSpec.from_json(run_id, context, engine.registry)
    store, plan = engine.store, spec.plan
    run_ctx = context.get("run") or {}
    created = store.create_run(run_id, context, {
        "status": RunStatus.RUNNING.value, "flow": spec.flow.name,
        "created_at": f"{row['created_at'].timestamp():.6f}", "started_at": f"{time.time():.6f}",
        "tenant_id": run_ctx.get("tenant_id"), "user_id": run_ctx.get("user_id"),
        "correlation_id": run_ctx.get("correlation_id"), "restored_from": "audit",
    }, plan.initial_remaining())
    if not created:
        return "skipped"  # another sweep rebuilt it first
    engine.forget_spec(run_id)
    for sid in plan.order:  # in order, so each settle counts down its dependents' needs
        r = settled.get(sid)
        if r is None:
            continue
        status = StepStatus(r["status"])
        output = dumps(r.get("output_data")) if status is StepStatus.SUCCEEDED else None
        store.settle(run_id, sid, status, {
            "status": status.value, "attempts": r.get("attempt") or 0, "error": r.get("error_message"),
            "error_type": r.get("error_type"), "restored_from": "audit",
        }, plan.steps[sid].dependents, output_json=output)
    remaining = store.remaining(run_id, plan.order)
    ready = [s for s in plan.order if s not in settled and remaining[s] <= 0]
    log.warning("run %s: rebuilt from the audit after Redis lost it (%d step(s) kept, %d ready)",
                run_id, len(settled), len(ready))
    dispatch.advance(engine, spec, ready, store.settled_count(run_id))
    return "rebuilt"


def _settled_steps(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each step's latest row, for the steps whose latest row is final."""
    latest: dict[str, dict[str, Any]] = {}
    for r in row.get("steps", []):  # in insertion order: later attempts come later
        prev = latest.get(r["step_id"])
        if prev is None or (r.get("attempt") or 0) >= (prev.get("attempt") or 0):
            latest[r["step_id"]] = r
    return {sid: r for sid, r in latest.items() if r["status"] in FINAL_STEP_STATUSES}


def _give_up(engine: Engine, run_id: str, reason: str) -> str:
    log.error("run %s cannot be driven on: %s; recorded as failed", run_id, reason)
    signals.run_finished.send(sender=engine, run_id=run_id, status=RunStatus.FAILED.value,
                              outputs=None, error=reason)
    return "failed"


def register() -> None:
    """Plug the audit into the recovery sweep (source of running runs, handler of lost ones)."""
    from taskplatform import recovery  # noqa: PLC0415

    recovery.register_run_source(AuditRunSource())
    recovery.register_lost_run_handler(_on_lost)


def _on_lost(engine: Engine, run_id: str) -> None:
    redrive(engine, run_id)
