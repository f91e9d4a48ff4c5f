"""Fan-in and launch: settle a step, decide its dependents, publish the ready ones, finish the run.

Every function here is safe to call twice for the same step (a redelivered message does):
settling is idempotent in Redis, a re-launched step finds its own status key and returns the
stored output, and a run finishes once (an atomic check-and-set on its status).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from taskplatform import expressions, signals
from taskplatform.engine import Engine, RunSpec
from taskplatform.errors import ExpressionError
from taskplatform.state import FAILED_STEP_STATUSES, FINAL_STEP_STATUSES, RunStatus, StepStatus, dumps

log = logging.getLogger(__name__)


def shown_as(spec: RunSpec, step_id: str) -> dict[str, str]:
    """What Flower and the logs show for a step's message: readable, ids only, no data."""
    return {"argsrepr": f"flow={spec.flow.name} step={step_id} run={spec.run_id}", "kwargsrepr": "{}"}


def publish(engine: Engine, spec: RunSpec, step_ids: Iterable[str]) -> None:
    """Publish the messages of ``step_ids`` over one producer connection."""
    ids = list(step_ids)
    if not ids:
        return
    app = engine.app
    with app.producer_or_acquire() as producer:
        for sid in ids:
            sig = spec.plan.steps[sid].signature(spec.run_id)
            app.send_task(sig.task, args=sig.args, producer=producer, **shown_as(spec, sid),
                          **sig.options)


def settle(engine: Engine, spec: RunSpec, step_id: str, status: StepStatus,
           detail: dict[str, Any], *, output_json: str | None = None) -> None:
    """Record a step's final status (and output) and drive the run on from it."""
    detail = {**detail, "status": status.value, "finished_at": round(time.time(), 6)}
    plan_step = spec.plan.steps[step_id]
    result = engine.store.settle(spec.run_id, step_id, status, detail, plan_step.dependents,
                                 output_json=output_json)
    if result.first:
        signals.step_settled.send(sender=engine, run_id=spec.run_id, step_id=step_id,
                                  status=status.value, detail=detail)
        _advance(engine, spec, result.ready, result.settled_count)
    else:
        redrive(engine, spec, step_id)


def redrive(engine: Engine, spec: RunSpec, step_id: str) -> None:
    """Drive a run on from an already settled step (after a redelivery or a crash).

    Re-launches dependents whose needs have all settled but that have not settled themselves:
    if one is already running, its lease turns the duplicate away.
    """
    deps = spec.plan.steps[step_id].dependents
    remaining = engine.store.remaining(spec.run_id, deps)
    statuses = engine.store.statuses(spec.run_id, deps)
    ready = [d for d in deps if remaining[d] <= 0 and statuses[d] not in FINAL_STEP_STATUSES]
    _advance(engine, spec, ready, engine.store.settled_count(spec.run_id))


def advance(engine: Engine, spec: RunSpec, ready: Iterable[str], settled_count: int) -> None:
    """Settle ``ready`` steps whose needs failed or skipped, launch the rest, finish if all settled."""
    _advance(engine, spec, ready, settled_count)


def _advance(engine: Engine, spec: RunSpec, ready: Iterable[str], settled_count: int) -> None:
    store, plan = engine.store, spec.plan
    launch: list[str] = []
    wave = list(ready)
    while wave:  # one round trip per wave: the needs' statuses and the run's cancel flag
        # A ready step's needs have all settled, so settling one step of a wave never changes
        # what another step of the same wave reads.
        need_status, _, canceled = store.read_steps(
            spec.run_id, {n for sid in wave for n in plan.steps[sid].needs}, outputs=False, cancel=True)
        next_wave: list[str] = []
        for sid in wave:
            step = plan.steps[sid]
            failed = [n for n in step.needs if need_status[n] in FAILED_STEP_STATUSES]
            skipped = [n for n in step.needs if need_status[n] == StepStatus.SKIPPED.value]
            outcome: StepStatus | None = None
            if failed:
                outcome = StepStatus.UPSTREAM_FAILED
                why = f"upstream step(s) did not succeed: {', '.join(failed)}"
            elif skipped and not step.has_when:
                outcome, why = StepStatus.SKIPPED, f"upstream step(s) skipped: {', '.join(skipped)}"
            elif canceled is not None:
                outcome, why = StepStatus.CANCELED, f"run canceled: {canceled}"
            if outcome is None:
                launch.append(sid)
                continue
            res = store.settle(spec.run_id, sid, outcome, {"status": outcome.value, "reason": why,
                                                             "finished_at": round(time.time(), 6)},
                               step.dependents)
            if res.first:
                signals.step_settled.send(sender=engine, run_id=spec.run_id, step_id=sid,
                                          status=outcome.value, detail={"reason": why})
                next_wave.extend(res.ready)
                settled_count = max(settled_count, res.settled_count)
        wave = next_wave
    publish(engine, spec, launch)
    if settled_count >= len(plan.steps):
        finish(engine, spec)


def finish(engine: Engine, spec: RunSpec) -> bool:
    """Compute the run's outcome and outputs and record them once; True for the one that did."""
    store = engine.store
    wants_outputs = bool(spec.flow.outputs)
    statuses, step_outputs, cancel_reason = store.read_steps(
        spec.run_id, spec.plan.order, outputs=wants_outputs, cancel=True)
    if any(s not in FINAL_STEP_STATUSES for s in statuses.values()):
        return False
    failed = [s for s in spec.plan.order if statuses[s] in ("failed", "dead_lettered")]
    canceled = [s for s in spec.plan.order if statuses[s] == "canceled"]
    status = RunStatus.SUCCEEDED
    error = failed_step = None
    if cancel_reason is not None:
        status, failed_step = RunStatus.CANCELED, (canceled[0] if canceled else None)
        error = f"canceled: {cancel_reason}"
    elif failed:
        status, failed_step = RunStatus.FAILED, failed[0]
        error = store.step_detail(spec.run_id, failed_step).get("error")
    elif canceled:
        status, failed_step = RunStatus.CANCELED, canceled[0]
        error = "canceled"
    outputs: dict[str, Any] = {}
    try:
        if wants_outputs:
            context = engine.context_from(spec, statuses, step_outputs)
            outputs = {k: expressions.render(v, context) for k, v in spec.flow.outputs.items()}
    except ExpressionError as exc:
        if status is RunStatus.SUCCEEDED:
            status, error = RunStatus.FAILED, f"outputs: {exc}"
    done = store.finish(spec.run_id, {
        "status": status.value,
        "outputs": dumps(outputs),
        "error": error,
        "failed_step": failed_step,
        "finished_at": f"{time.time():.6f}",
    })
    if done:
        signals.run_finished.send(sender=engine, run_id=spec.run_id, status=status.value,
                                  outputs=outputs, error=error)
        log.info("run %s %s", spec.run_id, status.value)
    return done
