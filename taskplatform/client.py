"""The Python API: ``submit_flow()`` and run handles, over a :class:`Client` you can build."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from taskplatform import defaults, dispatch, signals
from taskplatform.engine import Engine, RunSpec, engine_for
from taskplatform.errors import BackendError, FlowFailed, RunLost, RunNotFound, RunTimeout
from taskplatform.flow import Flow
from taskplatform.state import RunStatus, translate_redis_errors
from taskplatform.validation import find_flow, load_flow_file, validate_flow, validate_inputs

FlowRef = str | Path | Mapping[str, Any] | Flow


@dataclass(frozen=True)
class StepView:
    """What a run handle reports about one step."""

    status: str
    attempts: int
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "attempts": self.attempts, "error": self.error}


class Run:
    """A handle on one run, from any process: status, steps, and wait for the outputs."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<Run {self.run_id}>"

    def _state(self) -> dict[str, str]:
        try:
            state = self.client.engine.store.run_state(self.run_id)
        except redis.RedisError as exc:
            raise translate_redis_errors(exc) from exc
        if not state:
            raise RunNotFound(self.run_id)
        return state

    def status(self) -> str:
        """``pending``, ``running``, ``succeeded``, ``failed`` or ``canceled``."""
        return self._state().get("status", RunStatus.PENDING.value)

    def info(self) -> dict[str, Any]:
        """Everything known: status, flow, outputs, error, timestamps and steps."""
        state = self._state()
        outputs = state.get("outputs")
        return {
            "run_id": self.run_id,
            "flow": state.get("flow"),
            "status": state.get("status", RunStatus.PENDING.value),
            "outputs": _json(outputs) if outputs else None,
            "error": state.get("error"),
            "failed_step": state.get("failed_step"),
            "created_at": _float(state.get("created_at")),
            "started_at": _float(state.get("started_at")),
            "finished_at": _float(state.get("finished_at")),
            "steps": {k: v.as_dict() for k, v in self.steps().items()},
        }

    def steps(self) -> dict[str, StepView]:
        """Status, attempts and error of every step, in the flow's order."""
        store = self.client.engine.store
        spec = self.client.engine.run_spec(self.run_id)
        if spec is None:
            raise RunNotFound(self.run_id)
        statuses = store.statuses(self.run_id, spec.plan.order)
        details = store.step_details(self.run_id)
        out = {}
        for sid in spec.plan.order:
            d = details.get(sid, {})
            out[sid] = StepView(statuses[sid], int(d.get("attempts", 0)), d.get("error") or d.get("reason")
                                if statuses[sid] not in ("succeeded", "running", "pending") else None)
        return out

    def outputs(self) -> dict[str, Any] | None:
        raw = self._state().get("outputs")
        return _json(raw) if raw else None

    def cancel(self, reason: str = "canceled by operator") -> list[str]:
        """Cancel the run: no new step starts, running ones are asked to stop, it ends canceled.

        Returns the steps canceled at once. Raises RunNotFound, RunStateError (already ended).
        """
        from taskplatform import control  # noqa: PLC0415

        return control.cancel(self.client.engine, self.run_id, reason=reason)

    def resume(self) -> list[str]:
        """Run a failed or canceled run on: succeeded steps keep their outputs, the rest run.

        Returns the steps that run again. Raises RunNotFound, RunStateError.
        """
        from taskplatform import control  # noqa: PLC0415

        return control.resume(self.client.engine, self.run_id)

    def _after_loss(self, lost_since: float, deadline: float | None,
                    timeout: float | None) -> dict[str, Any] | None:
        """The run's Redis state is gone: its outputs if the audit has it succeeded, None to
        keep waiting while the recovery sweep may rebuild it from the audit; or raises
        (FlowFailed with the audit's reason, RunLost, RunTimeout)."""
        from taskplatform.audit.archive import TERMINAL, archived_run  # noqa: PLC0415

        settings = self.client.engine.settings
        archived = archived_run(settings, self.run_id)
        if archived is not None and archived.status() in TERMINAL:
            return archived.wait()  # the outputs, or FlowFailed
        now = time.monotonic()
        if archived is None or now - lost_since > settings.lost_run_grace_s:
            raise RunLost(self.run_id)
        if deadline is not None and now > deadline:
            raise RunTimeout(self.run_id, timeout or 0.0, "running")
        return None

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; return its outputs or raise FlowFailed (or RunTimeout).

        Rides out a Redis restart for up to ``WAIT_REDIS_OUTAGE_S`` (then BackendError). If the
        run's state vanished from Redis, it waits while the audit has the run running (the
        recovery sweep rebuilds it from there) for up to ``lost_run_grace_s``, then raises
        RunLost: no caller waits forever.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self.client.engine.store
        outage_since: float | None = None
        lost_since: float | None = None
        while True:
            try:
                state = self._state()
                outage_since = lost_since = None
            except RunNotFound:
                lost_since = lost_since or time.monotonic()
                outputs = self._after_loss(lost_since, deadline, timeout)
                if outputs is not None:
                    return outputs
                time.sleep(0.5)
                continue
            except BackendError:
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > defaults.WAIT_REDIS_OUTAGE_S \
                        or (deadline is not None and now > deadline):
                    raise
                time.sleep(0.5)
                continue
            status = state.get("status", RunStatus.PENDING.value)
            if status in ("succeeded", "failed", "canceled"):
                if status == "succeeded":
                    return _json(state.get("outputs") or "{}")
                raise FlowFailed(self.run_id, status, state.get("failed_step"), state.get("error"))
            block = 1.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunTimeout(self.run_id, timeout or 0.0, status)
                block = min(block, left)
            try:
                store.wait_done(self.run_id, max(block, 0.01))
            except redis.RedisError:
                time.sleep(0.2)  # the next _state() decides: outage, lost run, or go on


class Client:
    """Submits flows and looks up runs on one Celery app (and so one Redis)."""

    def __init__(self, app: Celery | None = None, *, flows_dir: str | Path | None = None) -> None:
        if app is None:
            from taskplatform.app import app as default_app  # noqa: PLC0415

            app = default_app
        self.app = app
        self._flows_dir = Path(flows_dir) if flows_dir is not None else None

    @property
    def engine(self) -> Engine:
        return engine_for(self.app)

    @property
    def flows_dir(self) -> Path:
        return self._flows_dir or self.engine.settings.flows_dir

    def load(self, flow: FlowRef) -> Flow:
        """A validated Flow from a name, a path, a dict or a Flow."""
        if isinstance(flow, Flow):
            return flow
        if isinstance(flow, Mapping):
            return validate_flow(dict(flow), source="<dict>", registry=self.engine.registry)
        return load_flow_file(find_flow(str(flow), self.flows_dir), registry=self.engine.registry)

    def submit(self, flow: FlowRef, inputs: Mapping[str, Any] | None = None, *,
               run_id: str | None = None, tenant_id: str | None = None, user_id: str | None = None,
               correlation_id: str | None = None) -> Run:
        """Validate, freeze and start a run; returns its handle at once.

        Submitting again with the ``run_id`` of an existing run returns that run's handle.
        Raises FlowValidationError (bad flow or inputs), FlowNotFound, BackendError.
        """
        model = self.load(flow)
        resolved = validate_inputs(model, dict(inputs or {}))
        run_id = run_id or uuid.uuid4().hex
        now = time.time()
        run_ctx = {
            "id": run_id,
            "flow": model.name,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "correlation_id": correlation_id or run_id,
            "created_at": datetime.fromtimestamp(now, UTC).isoformat(),
            "deployment": self.engine.settings.deployment,
        }
        spec_json = {"flow": model.to_spec(), "inputs": resolved, "run": run_ctx}
        engine = self.engine
        spec = RunSpec.from_json(run_id, spec_json, engine.registry)
        try:
            created = engine.store.create_run(
                run_id,
                spec_json,
                {"status": RunStatus.PENDING.value, "flow": model.name, "created_at": f"{now:.6f}",
                 "tenant_id": tenant_id, "user_id": user_id, "correlation_id": run_ctx["correlation_id"]},
                spec.plan.initial_remaining(),
            )
            if not created:
                return Run(self, run_id)
            signals.run_submitted.send(sender=self, run_id=run_id, flow=model.name, spec=spec_json)
            dispatch.publish(engine, spec, spec.plan.roots)
        except redis.RedisError as exc:
            raise translate_redis_errors(exc) from exc
        return Run(self, run_id)

    def get_run(self, run_id: str) -> Run:
        """The handle of an existing run; from the audit once Redis has forgotten it.

        Raises RunNotFound when neither Redis nor the audit knows the run.
        """
        run = Run(self, run_id)
        try:
            run._state()
        except RunNotFound:
            from taskplatform.audit.archive import archived_run  # noqa: PLC0415

            archived = archived_run(self.engine.settings, run_id)
            if archived is None:
                raise
            return archived  # type: ignore[return-value]  # same reads as Run
        return run

    def replay(self, entry_id: str) -> dict[str, Any]:
        """Replay a dead-lettered step under its run and step ids (``manage.py dlq replay``)."""
        from taskplatform import control  # noqa: PLC0415

        return control.replay(self.engine, entry_id)

    def recover(self, *, stale_after_s: float | None = None) -> dict[str, Any]:
        """One recovery sweep now (``manage.py recover``); returns what it found and did."""
        from taskplatform import recovery  # noqa: PLC0415

        return recovery.recover(self.engine, stale_after_s=stale_after_s).as_dict()

    def recent_runs(self, limit: int = 50) -> list[str]:
        return self.engine.store.recent_runs(limit)


def _json(raw: str) -> Any:
    import json

    return json.loads(raw)


def _float(raw: str | None) -> float | None:
    return float(raw) if raw else None


_default_client: Client | None = None


def default_client() -> Client:
    """The process-wide client: on REDIS_URL, or on an embedded Redis and worker when unset."""
    global _default_client
    if _default_client is None:
        from taskplatform import embedded  # noqa: PLC0415
        from taskplatform.app import app  # noqa: PLC0415
        from taskplatform.audit.db import startup_check  # noqa: PLC0415
        from taskplatform.settings import load_settings  # noqa: PLC0415

        settings = load_settings()
        startup_check(settings)
        if settings.embedded:
            embedded.start_process_stack(app, settings)
        _default_client = Client(app)
    return _default_client


def submit_flow(flow: FlowRef, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None,
                tenant_id: str | None = None, user_id: str | None = None,
                correlation_id: str | None = None) -> Run:
    """Submit a flow (name under flows/, path, dict or Flow) and return its run handle."""
    return default_client().submit(flow, inputs, run_id=run_id, tenant_id=tenant_id,
                                   user_id=user_id, correlation_id=correlation_id)


def get_run(run_id: str) -> Run:
    """The handle of an existing run, from any process."""
    return default_client().get_run(run_id)
