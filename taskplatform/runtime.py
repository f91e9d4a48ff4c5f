"""The step runtime: what every connector task does when a message arrives.

In a flow, a message carries ``(run_id, step_id)`` and nothing else. The task claims the step
(idempotency key with a lease), resolves ``with:`` from the stored outputs, runs the action,
stores the output, settles the step and launches what is ready. Outside a flow, the same task
takes the action's inputs as keyword arguments and returns the output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import traceback
import uuid
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task
from pydantic import ValidationError

from connectors.base import Connector, Defer, StepContext, reset_current_step, set_current_step
from taskplatform import defaults, dispatch, expressions, lease, logs, secret_source, secrets, signals
from taskplatform.compiler import task_name
from taskplatform.engine import Engine, RunSpec, engine_for
from taskplatform.errors import ExpressionError, PermanentError, StepTimedOut, TransientError
from taskplatform.flow import RetryPolicy
from taskplatform.state import Claim, StepStatus, dumps

log = logging.getLogger(__name__)

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError, ConnectionError, TimeoutError, StepTimedOut,
)
STARTED_KW = "_tp_first_started_at"  # carried across deferrals of a standalone call


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying under the step's policy."""
    return isinstance(exc, TRANSIENT_TYPES) and not isinstance(exc, PermanentError)


def should_retry(policy: RetryPolicy, exc: BaseException) -> bool:
    """Whether ``exc`` is retried under ``policy``: its ``retry_on`` list, or transient errors."""
    if policy.retry_on is None:
        return is_transient(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    status = getattr(exc, "http_status", None)
    return any(item in names if isinstance(item, str) else item == status for item in policy.retry_on)


def dead_letter(engine: Engine, spec: RunSpec, step_id: str, resolved: Any, error: BaseException,
                detail: dict[str, Any]) -> str:
    """Write the step's dead-letter entry (inputs and error masked); returns its id."""
    return engine.dlq.add_step(
        flow=spec.flow.name, run_id=spec.run_id, step_id=step_id, action=spec.plan.steps[step_id].action,
        queue=detail.get("queue"), inputs=resolved, error_type=type(error).__name__,
        error=detail.get("error", describe_error(error)), traceback=detail.get("traceback"),
        attempts=int(detail.get("attempts", 0)), first_started_at=detail.get("first_started_at"),
        failed_at=round(time.time(), 6),
    )


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, jittered into [d/2, d].

    Jitter never gives 0 s (a trap of Celery's own ``retry_jitter``).
    """
    base = float(policy.backoff_s or 0) * (2 ** (attempt - 1))
    delay = min(float(policy.max_backoff_s or 0), base)
    if policy.jitter and delay > 0:
        delay = random.uniform(delay / 2, delay)
    return delay


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def execute(connector: Connector, inputs: Any) -> Any:
    """Run an action in its mode: sync, or async on an event loop of its own."""
    if connector.is_async():
        return asyncio.run(connector.execute_action_async(inputs))
    return connector.execute_action(inputs)


def parse_inputs(connector: Connector, resolved: dict[str, Any], where: str) -> Any:
    try:
        return connector.parse_inputs(resolved)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join([where, *(str(p) for p in e['loc'])])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise PermanentError(f"inputs do not fit {connector.name}: {problems}") from None


# --- in a flow --------------------------------------------------------------------------------


def run_step(task: Task, connector: Connector, run_id: str, step_id: str) -> dict[str, Any]:
    engine = engine_for(task.app)
    spec = engine.run_spec(run_id)
    if spec is None:
        log.error("run %s has no state in Redis (expired or never submitted); dropping step %s",
                  run_id, step_id)
        return {"status": "lost"}
    lease_s = engine.settings.lease_ttl_s
    token = uuid.uuid4().hex
    claim = engine.store.claim(run_id, step_id, token, lease_s)
    if claim.outcome == "lost":
        engine.forget_spec(run_id)
        log.error("run %s lost its state in Redis (restart without persistence?); dropping step %s",
                  run_id, step_id)
        return {"status": "lost"}
    if claim.outcome == "busy":  # another delivery holds the lease: look again soon
        look_again_s = min(claim.retry_in_s, defaults.BUSY_RECHECK_S) + random.uniform(0, 0.5)
        raise task.retry(countdown=look_again_s, max_retries=None, **dispatch.shown_as(spec, step_id))
    if claim.outcome == "done":  # a redelivery: the step settled before; drive the run on
        dispatch.redrive(engine, spec, step_id)
        return {"status": claim.status, "duplicate": True}
    handle = lease.keeper.hold(lease.Lease(engine.redis_url, engine.store.status_key(run_id, step_id),
                                           token, lease_s))
    try:
        return _run_claimed(task, engine, spec, connector, step_id, claim)
    finally:
        lease.keeper.drop(handle)


def _run_claimed(task: Task, engine: Engine, spec: RunSpec, connector: Connector,
                 step_id: str, claim: Claim) -> dict[str, Any]:
    run_id = spec.run_id
    plan_step = spec.plan.steps[step_id]
    if claim.cancel is not None:
        dispatch.settle(engine, spec, step_id, StepStatus.CANCELED,
                        {"reason": "run canceled before the step started"})
        return {"status": "canceled"}

    store = engine.store
    detail = dict(claim.detail)
    waiting = detail.get("status") == StepStatus.WAITING.value
    lost = detail.get("status") == StepStatus.RUNNING.value  # the last attempt's process died
    attempt = int(detail.get("attempts", 0)) + (0 if waiting else 1)
    logs.set_attempt(attempt)
    now = time.time()
    detail.update(
        status=StepStatus.RUNNING.value,
        attempts=attempt,
        first_started_at=detail.get("first_started_at", round(now, 6)),
        started_at=round(now, 6),
        worker=task.request.hostname,
        pid=os.getpid(),
        task_id=task.request.id,
        queue=(task.request.delivery_info or {}).get("routing_key"),
    )
    store.set_step_detail(run_id, step_id, detail)
    if lost and attempt > (plan_step.retry.max_attempts or 1):  # crash loop or hard time limit
        error = TransientError(f"step {step_id!r}: {attempt - 1} attempt(s) lost (worker died or hit "
                               f"the hard time limit of {plan_step.time_limit_s:g}s)")
        detail.update(attempts=attempt - 1, error=describe_error(error), error_type="TransientError")
        detail["dead_letter"] = dead_letter(engine, spec, step_id, None, error, detail)
        dispatch.settle(engine, spec, step_id, StepStatus.DEAD_LETTERED, detail)
        return {"status": StepStatus.DEAD_LETTERED.value}
    step = spec.flow.steps[step_id]
    ctx_token = set_current_step(StepContext(run_id, step_id, attempt, detail["first_started_at"],
                                             plan_step.soft_time_limit_s))
    retry_in: float | None = None
    defer_in: float | None = None
    error: BaseException | None = None
    output_json: str | None = None
    resolved: Any = None
    try:
        context = engine.context_for(spec, step_id)
        if step.when is not None and not expressions.truthy(expressions.render(step.when, context)):
            detail["reason"] = f"when was false: {step.when}"
            dispatch.settle(engine, spec, step_id, StepStatus.SKIPPED, detail)
            return {"status": "skipped"}
        resolved = expressions.render(step.with_, secret_source.with_secrets(
            context, step.with_, secrets_file=engine.settings.secrets_file))
        inputs = parse_inputs(connector, resolved, f"steps.{step_id}.with")
        signals.step_started.send(sender=task, run_id=run_id, step_id=step_id, attempt=attempt,
                                  detail=detail, inputs=resolved, connector=connector)
        output = execute(connector, inputs)
        try:
            output_json = dumps(secrets.redact(output))  # stored outputs never hold a secret
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"output is not JSON-serialisable: {exc}") from None
    except Defer as d:
        defer_in = d.delay_s
    except SoftTimeLimitExceeded:
        if store.cancel_requested(run_id) is not None:  # cancel() interrupts with the same signal
            detail["reason"] = "canceled while running"
            dispatch.settle(engine, spec, step_id, StepStatus.CANCELED, detail)
            return {"status": "canceled"}
        error = StepTimedOut(f"step {step_id!r} ran past its timeout of {plan_step.soft_time_limit_s:g}s")
    except ExpressionError as exc:
        error = PermanentError(str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure of user code is recorded, not raised
        error = exc
        detail["traceback"] = secrets.redact_text(traceback.format_exc(limit=20))[-4000:]
    finally:
        reset_current_step(ctx_token)

    if defer_in is not None:
        detail["status"] = StepStatus.WAITING.value
        store.set_step_detail(run_id, step_id, detail)
        store.release(run_id, step_id, StepStatus.WAITING)
        raise task.retry(countdown=min(defer_in, engine.settings.max_countdown_s), max_retries=None,
                         **dispatch.shown_as(spec, step_id))

    if error is not None:
        detail["error"] = secrets.redact_text(describe_error(error))  # shown by status, audit, CLI
        detail["error_type"] = type(error).__name__
        retryable = should_retry(plan_step.retry, error)
        if retryable and attempt < (plan_step.retry.max_attempts or 1) \
                and store.cancel_requested(run_id) is None:
            retry_in = min(backoff_s(plan_step.retry, attempt), engine.settings.max_countdown_s)
            detail["status"] = StepStatus.RETRYING.value
            detail["retry_in_s"] = round(retry_in, 3)
            detail["retry_at"] = round(time.time() + retry_in, 6)
            store.set_step_detail(run_id, step_id, detail)
            store.release(run_id, step_id, StepStatus.RETRYING)
            log.warning("run %s step %s attempt %d failed, retrying in %.2fs: %s",
                        run_id, step_id, attempt, retry_in, secrets.redact_text(detail["error"]))
            raise task.retry(countdown=retry_in, max_retries=None, **dispatch.shown_as(spec, step_id))
        detail["dead_letter"] = dead_letter(engine, spec, step_id, resolved, error, detail)
        why = "permanent error" if not retryable else f"gave up after {attempt} attempt(s)"
        log.error("run %s step %s dead-lettered (%s) on attempt %d: %s", run_id, step_id, why,
                  attempt, secrets.redact_text(detail["error"]))
        dispatch.settle(engine, spec, step_id, StepStatus.DEAD_LETTERED, detail)
        return {"status": StepStatus.DEAD_LETTERED.value}

    detail.pop("error", None)
    detail.pop("error_type", None)
    detail.pop("traceback", None)
    detail["duration_ms"] = round((time.time() - detail["started_at"]) * 1000, 3)
    assert output_json is not None
    dispatch.settle(engine, spec, step_id, StepStatus.SUCCEEDED, detail, output_json=output_json)
    return {"status": "succeeded"}


# --- on its own -------------------------------------------------------------------------------


def run_standalone(task: Task, connector: Connector, kwargs: dict[str, Any]) -> Any:
    started = float(kwargs.pop(STARTED_KW, time.time()))
    inputs = parse_inputs(connector, kwargs, "with")
    token = set_current_step(StepContext(first_started_at=started, attempt=task.request.retries + 1))
    try:
        return execute(connector, inputs)
    except Defer as d:
        raise task.retry(kwargs={**kwargs, STARTED_KW: started}, max_retries=None,
                         countdown=min(d.delay_s, defaults.MAX_COUNTDOWN_S)) from None
    except TRANSIENT_TYPES as exc:
        if task.request.retries + 1 >= defaults.RETRY_MAX_ATTEMPTS:
            raise
        raise task.retry(exc=exc, countdown=defaults.RETRY_BACKOFF_S * 2 ** task.request.retries,
                         max_retries=None) from None
    finally:
        reset_current_step(token)


def register_connector_tasks(app: Celery, actions: dict[str, Connector]) -> None:
    """Register one Celery task per connector action, named ``connectors.<action>``."""
    registered: set[str] = app.__dict__.setdefault("_taskplatform_actions", set())
    for action, connector in actions.items():
        name = task_name(action)
        if name in registered:
            continue
        registered.add(name)

        def run(self: Task, *args: Any, _connector: Connector = connector, **kwargs: Any) -> Any:
            if len(args) == 2 and not kwargs and all(isinstance(a, str) for a in args):
                return run_step(self, _connector, args[0], args[1])
            if args:  # a poison message: no retry can fix it; keep it for an operator
                reason = f"{self.name} takes (run_id, step_id) in a flow, or keyword inputs on its own"
                queue = (self.request.delivery_info or {}).get("routing_key")
                entry = engine_for(self.app).dlq.add_poison(
                    queue=queue, reason=f"wrong arguments: {reason}", body={"args": args, "kwargs": kwargs})
                log.error("poison message on %s: wrong arguments for %s (dead letter %s)",
                          queue, self.name, entry)
                return {"status": "poison", "dead_letter": entry}
            return run_standalone(self, _connector, kwargs)

        run.__doc__ = type(connector).__doc__
        app.task(
            name=name,
            bind=True,
            typing=False,
            shared=False,
            queue=connector.default_queue(),
            acks_late=True,
            reject_on_worker_lost=True,
        )(run)
