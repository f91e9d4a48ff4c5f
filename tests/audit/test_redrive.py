"""Runs whose Redis state was lost are rebuilt from the audit by the recovery sweep."""

from __future__ import annotations

import time

import pytest

from taskplatform import recovery
from taskplatform.audit.redrive import AuditRunSource, redrive
from taskplatform.engine import Engine
from taskplatform.errors import FlowFailed


def _lose(client, run_id: str) -> None:
    """Delete every Redis key of a run, as a restart without persistence would."""
    r = client.engine.redis
    keys = list(r.scan_iter(match=f"run:{run_id}:*"))
    r.delete(*keys)
    r.zrem("runs", run_id)
    r.zrem("runs:active", run_id)
    client.engine.forget_spec(run_id)


def _until_audited(audit, run_id: str, step_id: str, status: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [s for s in audit.run(run_id)["steps"] if s["step_id"] == step_id]
        if rows and rows[-1]["status"] == status:
            return
        assert time.monotonic() < deadline, f"step {step_id} never audited {status}: {rows}"
        time.sleep(0.05)


def _flow(first: dict, name: str) -> dict:
    return {"name": name, "inputs": {"blob": {"type": "string", "default": ""}}, "steps": {
        "a": first,
        "pause": {"uses": "wait.duration", "needs": ["a"], "with": {"duration": "PT1S"}},
        "c": {"uses": "python.call", "needs": ["pause"],
              "with": {"function": "tests.funcs:count", "kwargs": {"key": f"{name}-c"}}},
    }, "outputs": {"a": "${{ steps.a.output }}", "c": "${{ steps.c.output.calls }}"}}


def _counter(client, key: str) -> int:
    return int(client.engine.redis.get(f"test:count:{key}") or 0)


def test_a_lost_run_is_rebuilt_from_the_audit_and_settled_steps_do_not_run_again(client, audit):
    flow = _flow({"uses": "python.call", "with": {"function": "tests.funcs:count",
                                                  "kwargs": {"key": "redrive-a"}}}, "redrive")
    run = client.submit(flow)
    _until_audited(audit, run.run_id, "a", "succeeded")
    _lose(client, run.run_id)
    other = Engine(client.app, client.engine.settings.model_copy(update={"deployment": "elsewhere"}))
    assert run.run_id not in AuditRunSource().run_ids(other)  # another platform's run: not ours
    assert redrive(other, run.run_id) == "skipped"

    report = recovery.recover(client.engine)
    assert run.run_id in report.lost
    assert run.wait(timeout=30) == {"a": {"calls": 1, "value": None}, "c": 1}
    assert _counter(client, "redrive-a") == 1  # restored from the audit, not run again
    assert client.engine.store.run_state(run.run_id)["restored_from"] == "audit"
    audit.flush()
    assert audit.run(run.run_id)["status"] == "succeeded"
    assert recovery.recover(client.engine).lost == []  # nothing left to do


def test_a_lost_run_whose_output_was_too_large_to_keep_ends_failed_with_the_reason(client, audit):
    flow = _flow({"uses": "transform.set", "with": {"values": {"blob": "${{ inputs.blob }}"}}},
                 "redrive-big")
    run = client.submit(flow, {"blob": "x" * 100_000})
    _until_audited(audit, run.run_id, "a", "succeeded")
    _lose(client, run.run_id)

    recovery.recover(client.engine)
    audit.flush()
    row = audit.run(run.run_id)
    assert row["status"] == "failed" and "too large for the audit to restore" in row["error_message"]
    with pytest.raises(FlowFailed, match="output of step\\(s\\) a was too large"):
        run.wait(timeout=30)  # the handle answers from the audit
    assert _counter(client, "redrive-big-c") == 0
