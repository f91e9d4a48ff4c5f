"""Operator actions on runs: cancel, resume, and replay of dead letters.

Resume and replay share one move, :func:`reopen`: make a set of steps (closed downstream)
runnable again in the same run, keep every other step's status and output, and launch the
reopened steps whose needs are all settled. The run is ``running`` again under its own id and
goes on to the end as any run does. Steps that succeeded are never run again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from taskplatform import dispatch, signals
from taskplatform.engine import Engine, RunSpec
from taskplatform.errors import RunNotFound, RunStateError
from taskplatform.state import FINAL_STEP_STATUSES, StepStatus

log = logging.getLogger(__name__)

KEPT_ON_RESUME = frozenset({StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value})


def _spec(engine: Engine, run_id: str) -> RunSpec:
    if not engine.store.run_state(run_id):
        raise RunNotFound(run_id)
    spec = engine.run_spec(run_id)
    if spec is None:
        raise RunNotFound(run_id)
    return spec


def reopen(engine: Engine, spec: RunSpec, step_ids: set[str], *, why: str) -> list[str]:
    """Make ``step_ids`` and everything downstream of them runnable again; returns them in order."""
    plan, store, run_id = spec.plan, engine.store, spec.run_id
    reopened = set(step_ids)
    for sid in step_ids:
        reopened |= plan.descendants(sid)
    raw = store.raw_statuses(run_id, plan.order)
    busy = [s for s in reopened if (raw[s] or "").startswith("running:")]
    if busy:
        raise RunStateError(f"run {run_id}: step(s) {', '.join(sorted(busy))} are running now; "
                            "wait for them or cancel the run first")
    final = {s for s, v in raw.items() if v in FINAL_STEP_STATUSES}
    remaining = {s: sum(1 for n in plan.steps[s].needs if n in reopened or n not in final)
                 for s in reopened}
    old = store.step_details(run_id)
    details = {}
    for sid in reopened:
        prev = old.get(sid, {})
        details[sid] = {"status": StepStatus.PENDING.value, "attempts": 0,
                        "reopened": int(prev.get("reopened", 0)) + 1, "reopened_why": why,
                        "previous_status": raw[sid], "previous_error": prev.get("error")}
    store.reopen(run_id, remaining, details, unsettled=len(reopened & final))
    ordered = [s for s in plan.order if s in reopened]
    signals.run_resumed.send(sender=engine, run_id=run_id, steps=ordered)
    log.info("run %s: reopened %s (%s)", run_id, ", ".join(ordered), why)
    ready = [s for s in ordered if remaining[s] == 0]
    dispatch.advance(engine, spec, ready, store.settled_count(run_id))
    return ordered


def resume(engine: Engine, run_id: str) -> list[str]:
    """Run again every step of a failed or canceled run that did not succeed; returns them.

    Raises RunNotFound, RunStateError (the run is still running, or succeeded).
    """
    spec = _spec(engine, run_id)
    status = engine.store.run_state(run_id).get("status")
    if status not in ("failed", "canceled"):
        raise RunStateError(f"run {run_id} is {status}: only failed or canceled runs can be resumed"
                            + (" (use `recover` for a stuck run)" if status == "running" else ""))
    statuses = engine.store.statuses(run_id, spec.plan.order)
    todo = {s for s, v in statuses.items() if v not in KEPT_ON_RESUME}
    if not todo:
        raise RunStateError(f"run {run_id}: every step succeeded or was skipped; nothing to resume")
    return reopen(engine, spec, todo, why="resume")


def replay(engine: Engine, entry_id: str) -> dict[str, Any]:
    """Re-run a dead-lettered step under its run and step ids; the run goes on to its end.

    Removes the entry. Raises DeadLetterNotFound, RunNotFound (the run's state is gone),
    RunStateError (a poison message, or the step is not dead-lettered any more).
    """
    entry = engine.dlq.get(entry_id)
    if entry.get("kind") != "step":
        raise RunStateError(f"dead letter {entry_id} is a poison message: there is no step to replay")
    run_id, step_id = entry["run_id"], entry["step_id"]
    spec = _spec(engine, run_id)
    current = engine.store.statuses(run_id, [step_id])[step_id]
    if current != StepStatus.DEAD_LETTERED.value:
        engine.dlq.delete(entry_id)
        raise RunStateError(f"run {run_id} step {step_id} is {current}, not dead_lettered; "
                            "entry removed")
    steps = reopen(engine, spec, {step_id}, why=f"replay of dead letter {entry_id}")
    engine.dlq.delete(entry_id)
    return {"entry": entry_id, "run_id": run_id, "steps": steps}


def cancel(engine: Engine, run_id: str, *, reason: str = "canceled by operator") -> list[str]:
    """Cancel a run: nothing new starts, running steps are asked to stop, the run ends canceled.

    Returns the steps canceled now (running ones settle when they stop). Raises RunNotFound,
    RunStateError (the run has ended already).
    """
    spec = _spec(engine, run_id)
    store, plan = engine.store, spec.plan
    status = store.run_state(run_id).get("status")
    if status in ("succeeded", "failed", "canceled"):
        raise RunStateError(f"run {run_id} has ended ({status}): nothing to cancel")
    store.request_cancel(run_id, reason)
    raw = store.raw_statuses(run_id, plan.order)
    details = store.step_details(run_id)
    canceled, running = [], []
    settled = 0
    for sid in plan.order:
        value = raw[sid]
        if value is not None and value.startswith("running:"):
            running.append(sid)
            continue
        if value in FINAL_STEP_STATUSES:
            continue
        detail = {**details.get(sid, {}), "status": StepStatus.CANCELED.value,
                  "reason": f"run canceled: {reason}", "finished_at": round(time.time(), 6)}
        res = store.settle(run_id, sid, StepStatus.CANCELED, detail, plan.steps[sid].dependents)
        if res.first:
            canceled.append(sid)
            settled = max(settled, res.settled_count)
            signals.step_settled.send(sender=engine, run_id=run_id, step_id=sid,
                                      status=StepStatus.CANCELED.value, detail=detail)
    for sid in running:
        task_id = details.get(sid, {}).get("task_id")
        if task_id:  # prefork: SIGUSR1 raises SoftTimeLimitExceeded in the step, seen as a cancel
            engine.app.control.revoke(task_id, terminate=True, signal="SIGUSR1")
    dispatch.finish(engine, spec)  # no-op while a step still runs: that step finishes the run
    log.info("run %s: cancel asked (%s); canceled %d step(s), %d running asked to stop",
             run_id, reason, len(canceled), len(running))
    return canceled
