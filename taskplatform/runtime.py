"""The step runtime: what every connector task does when a message arrives.

In a flow, a message carries ``(run_id, step_id)`` and nothing else. The task claims the step
(idempotency key with a lease), resolves ``with:`` from the stored outputs, runs the action,
stores the output, settles the step and launches what is ready. Outside a flow, the same task
takes the action's inputs as keyword arguments and returns the output.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
import uuid
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task
from pydantic import ValidationError

from connectors.base import Connector, Defer, StepContext, reset_current_step, set_current_step
from taskplatform import defaults, dispatch, expressions, secret_source, secrets, signals
from taskplatform.compiler import task_name
from taskplatform.engine import RunSpec, engine_for
from taskplatform.errors import ExpressionError, PermanentError, StepTimedOut, TransientError
from taskplatform.flow import RetryPolicy
from taskplatform.state import StepStatus, dumps

log = logging.getLogger(__name__)

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError, ConnectionError, TimeoutError, StepTimedOut,
)
STARTED_KW = "_tp_first_started_at"  # carried across deferrals of a standalone call


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying under the step's policy."""
    return isinstance(exc, TRANSIENT_TYPES) and not isinstance(exc, PermanentError)


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
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else f"{where}: {e['msg']}"
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
    plan_step = spec.plan.steps[step_id]
    lease_s = plan_step.time_limit_s + defaults.LEASE_MARGIN_S
    claim = engine.store.claim(run_id, step_id, uuid.uuid4().hex, lease_s)
    if claim.outcome == "busy":  # another delivery holds the lease: look again soon
        look_again_s = min(claim.retry_in_s, defaults.BUSY_RECHECK_S) + random.uniform(0, 0.5)
        raise task.retry(countdown=look_again_s, max_retries=None)
    if claim.outcome == "done":  # a redelivery: the step settled before; drive the run on
        dispatch.redrive(engine, spec, step_id)
        return {"status": claim.status, "duplicate": True}

    store = engine.store
    detail = store.step_detail(run_id, step_id)
    waiting = detail.get("status") == StepStatus.WAITING.value
    attempt = int(detail.get("attempts", 0)) + (0 if waiting else 1)
    now = time.time()
    detail.update(
        status=StepStatus.RUNNING.value,
        attempts=attempt,
        first_started_at=detail.get("first_started_at", round(now, 6)),
        started_at=round(now, 6),
        worker=task.request.hostname,
        task_id=task.request.id,
        queue=(task.request.delivery_info or {}).get("routing_key"),
    )
    store.set_step_detail(run_id, step_id, detail)
    step = spec.flow.steps[step_id]
    ctx_token = set_current_step(StepContext(run_id, step_id, attempt, detail["first_started_at"],
                                             plan_step.soft_time_limit_s))
    retry_in: float | None = None
    defer_in: float | None = None
    error: BaseException | None = None
    output_json: str | None = None
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
        raise task.retry(countdown=min(defer_in, engine.settings.max_countdown_s), max_retries=None)

    if error is not None:
        detail["error"] = secrets.redact_text(describe_error(error))
        detail["error_type"] = type(error).__name__
        if is_transient(error) and attempt < (plan_step.retry.max_attempts or 1):
            retry_in = backoff_s(plan_step.retry, attempt)
            detail["status"] = StepStatus.RETRYING.value
            detail["retry_in_s"] = round(retry_in, 3)
            store.set_step_detail(run_id, step_id, detail)
            store.release(run_id, step_id, StepStatus.RETRYING)
            log.warning("run %s step %s attempt %d failed, retrying in %.2fs: %s",
                        run_id, step_id, attempt, retry_in, detail["error"])
            raise task.retry(countdown=retry_in, max_retries=None)
        log.error("run %s step %s failed on attempt %d: %s", run_id, step_id, attempt, detail["error"])
        dispatch.settle(engine, spec, step_id, StepStatus.FAILED, detail)
        return {"status": "failed"}

    detail.pop("error", None)
    detail.pop("error_type", None)
    detail.pop("traceback", None)
    detail["duration_ms"] = round((time.time() - detail["started_at"]) * 1000, 3)
    assert output_json is not None
    store.save_output(run_id, step_id, output_json)
    dispatch.settle(engine, spec, step_id, StepStatus.SUCCEEDED, detail)
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
            if args:
                raise PermanentError(
                    f"{self.name} takes (run_id, step_id) in a flow, or keyword inputs on its own"
                )
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
