"""Audit rows on real Postgres, written by signal handlers of the in-process worker."""

from __future__ import annotations

import json

import pytest

from taskplatform import signals
from taskplatform.audit import events
from taskplatform.errors import FlowFailed
from tests.audit.conftest import attempts_by_step
from tests.orders_server import OrdersServer

FINAL = {"succeeded", "failed", "dead_lettered", "skipped", "upstream_failed", "canceled", "revoked"}


@pytest.fixture(scope="module")
def orders():
    with OrdersServer() as server:
        yield server


def _check_run_matches_redis(client, audit, run):
    """One flow row; per step, rows whose last attempt has the step's Redis status and attempts."""
    row = audit.run(run.run_id)
    info = run.info()
    assert row["status"] == info["status"]
    assert row["flow_id"] == info["flow"]
    assert row["completed_at"] is not None
    spec = client.engine.store.load_spec(run.run_id)
    assert row["execution_context"] == json.loads(json.dumps(spec))  # enough to re-drive the run
    assert row["input_data"] == spec["inputs"]
    if info["status"] == "succeeded":
        assert row["output_data"] == info["outputs"]
    by_step = attempts_by_step(row)
    assert set(by_step) == set(info["steps"])
    for sid, view in info["steps"].items():
        rows = by_step[sid]
        assert all(r["status"] in FINAL | {"retrying"} for r in rows), (sid, rows)
        last = rows[-1]
        assert last["status"] == view["status"], (sid, rows)
        assert last["attempt"] == view["attempts"], (sid, rows)
        assert [r["attempt"] for r in rows] == sorted({r["attempt"] for r in rows})  # no duplicates
        if last["attempt"]:
            assert last["worker_id"] and last["task_id"] and last["queue"]
            assert last["execution_mode"] in ("sync", "async", "cpu")
            assert last["execution_time_ms"] is not None
    return row, by_step


@pytest.mark.parametrize("name,inputs", [
    ("hello", {"who": "audit"}),
    ("diamond", {"x": 3}),
    ("branch", {}),
    ("branch", {"threshold": 1}),
])
def test_each_example_leaves_one_flow_row_and_its_step_rows(client, audit, name, inputs):
    run = client.submit(name, inputs)
    run.wait(timeout=60)
    row, by_step = _check_run_matches_redis(client, audit, run)
    assert audit.count(events.runs, run_id=run.run_id) == 1
    if name == "branch":  # one branch ran, the other was skipped by its when:
        statuses = {s: rows[-1]["status"] for s, rows in by_step.items()}
        assert sorted([statuses["big_order"], statuses["small_order"]]) == ["skipped", "succeeded"]


@pytest.mark.parametrize("name", ["http", "report"])
def test_http_examples(client, audit, orders, name):
    run = client.submit(name, {"base_url": orders.url})
    run.wait(timeout=60)
    row, by_step = _check_run_matches_redis(client, audit, run)
    first = by_step["fetch"][-1]
    assert first["handler"] == "http.request" and first["input_data"]["url"].startswith(orders.url)
    if name == "report":
        assert by_step["totals"][-1]["execution_mode"] == "cpu" and by_step["totals"][-1]["queue"] == "cpu"


def test_retried_step_has_one_row_per_attempt(client, audit):
    retry = {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.1, "jitter": False}
    f = {"name": "audit-retry", "steps": {"flaky": {
        "uses": "python.call", "retry": retry,
        "with": {"function": "tests.funcs:flaky", "kwargs": {"key": "audit-retry", "failures": 2}}}}}
    run = client.submit(f)
    run.wait(timeout=30)
    row, by_step = _check_run_matches_redis(client, audit, run)
    rows = by_step["flaky"]
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "retrying"), (2, "retrying"), (3, "succeeded")]
    assert rows[0]["error_type"] == "TransientError" and "planned failures" in rows[0]["error_message"]
    assert rows[2]["output_data"] == {"calls": 3} and rows[2]["error_message"] is None
    assert len({r["task_id"] for r in rows}) == 1  # task.retry() keeps the message's id


def test_failed_step_and_its_downstream(client, audit):
    f = {"name": "audit-fail", "steps": {
        "bad": {"uses": "python.call",
                "with": {"function": "tests.funcs:boom", "kwargs": {"message": "kaput"}}},
        "after": {"uses": "transform.set", "needs": ["bad"], "with": {"values": {"v": 1}}},
        "free": {"uses": "transform.set", "with": {"values": {"v": 2}}},
    }}
    run = client.submit(f)
    with pytest.raises(FlowFailed):
        run.wait(timeout=30)
    row, by_step = _check_run_matches_redis(client, audit, run)
    assert row["status"] == "failed" and row["failed_step"] == "bad" and "kaput" in row["error_message"]
    bad = by_step["bad"]
    assert [(r["attempt"], r["status"], r["error_type"]) for r in bad] == [(1, "dead_lettered", "ValueError")]
    assert "ValueError: kaput" in bad[0]["error_message"]
    assert by_step["after"][0]["status"] == "upstream_failed" and by_step["after"][0]["attempt"] == 0
    assert "bad" in by_step["after"][0]["error_message"]
    assert by_step["free"][0]["status"] == "succeeded"


def _redeliver(client, run_id, step_id, task_id):
    spec = client.engine.run_spec(run_id)
    sig = spec.plan.steps[step_id].signature(run_id)
    options = {k: v for k, v in sig.options.items() if k not in ("ignore_result", "task_id")}
    return client.app.send_task(sig.task, args=sig.args, task_id=task_id, **options)


def test_republishing_the_same_message_makes_no_duplicate_row(client, audit):
    run = client.submit("diamond", {"x": 5})
    run.wait(timeout=30)
    before = audit.run(run.run_id)
    task_ids = {r["step_id"]: r["task_id"] for r in before["steps"]}
    for sid in ("double", "join", "double"):
        assert _redeliver(client, run.run_id, sid, task_ids[sid]).get(timeout=30)["duplicate"] is True
    after = audit.run(run.run_id)
    key = lambda r: (r["step_id"], r["attempt"], r["task_id"], r["status"])  # noqa: E731
    assert sorted(map(key, after["steps"])) == sorted(map(key, before["steps"]))
    assert audit.count(run_id=run.run_id) == len(before["steps"])


def test_replaying_events_is_idempotent(client, audit):
    """The same spooled batch written twice (a drainer died between commit and trim)."""
    run = client.submit("hello", {"who": "twice"})
    run.wait(timeout=30)
    first = audit.run(run.run_id)
    from taskplatform.audit import db

    evts = [
        {"kind": "run_submitted", "at": 1.0, "run_id": run.run_id, "flow_id": "hello",
         "input_data": {"who": "twice"}, "execution_context": first["execution_context"]},
        {"kind": "attempt", "at": 2.0, "run_id": run.run_id, "step_id": "greet", "attempt": 1,
         "task_id": first["steps"][0]["task_id"], "status": "started"},
    ]
    with db.get_engine(audit.url).begin() as conn:
        for e in evts * 2:
            events.apply(conn, e)
    again = audit.run(run.run_id)
    assert again["status"] == "succeeded"  # a late submit does not reopen the run
    assert [r["status"] for r in again["steps"]] == [r["status"] for r in first["steps"]]  # nor the attempt
    assert audit.count(run_id=run.run_id) == len(first["steps"])


def test_large_output_is_truncated_with_a_marker(client, audit):
    big = "x" * 100_000
    f = {"name": "audit-big", "steps": {"big": {"uses": "transform.set", "with": {"values": {"blob": big}}}}}
    run = client.submit(f)
    run.wait(timeout=30)
    step = audit.run(run.run_id)["steps"][0]
    assert step["output_truncated"] is True
    assert step["output_data"]["_truncated"] is True and step["output_data"]["size_bytes"] > 100_000
    assert len(json.dumps(step["output_data"])) < 4096


def test_resumed_run_goes_back_to_running_and_new_attempts_get_new_rows(client, audit):
    run = client.submit("hello", {"who": "again"})
    run.wait(timeout=30)
    assert audit.run(run.run_id)["status"] == "succeeded"
    signals.run_resumed.send(sender=client.engine, run_id=run.run_id, steps=["greet"])
    row = audit.run(run.run_id)
    assert row["status"] == "running" and row["completed_at"] is None
    # A replayed step arrives as a new message: its attempt is a new row, the old one stays.
    detail = {**client.engine.store.step_detail(run.run_id, "greet"), "task_id": "replayed-task",
              "attempts": 2, "started_at": 1.0, "finished_at": 2.0}
    signals.step_settled.send(sender=client.engine, run_id=run.run_id, step_id="greet",
                              status="dead_lettered", detail={**detail, "error": "gave up"})
    signals.run_finished.send(sender=client.engine, run_id=run.run_id, status="failed",
                              outputs={}, error="gave up")
    row = audit.run(run.run_id)
    assert row["status"] == "failed"
    greet = attempts_by_step(row)["greet"]
    assert [(r["attempt"], r["status"]) for r in greet] == [(1, "succeeded"), (2, "dead_lettered")]


def test_get_run_and_cli_fall_back_to_the_audit_when_redis_forgot(client, audit, redis_server, monkeypatch):
    from click.testing import CliRunner

    from taskplatform.audit.archive import ArchivedRun
    from taskplatform.cli import main

    run = client.submit("diamond", {"x": 6}, tenant_id="acme")
    outputs = run.wait(timeout=30)
    expected_steps = run.info()["steps"]
    audit.flush()
    r = client.engine.redis
    for key in r.scan_iter(match=f"run:{run.run_id}:*"):
        r.delete(key)
    handle = client.get_run(run.run_id)
    assert isinstance(handle, ArchivedRun)
    info = handle.info()
    assert info["status"] == "succeeded" and info["outputs"] == outputs and info["source"] == "audit"
    assert info["steps"] == expected_steps and list(info["steps"]) == list(expected_steps)
    assert handle.wait() == outputs

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    runner = CliRunner()
    res = runner.invoke(main, ["status", run.run_id, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"] == outputs
    res = runner.invoke(main, ["runs", "--flow", "diamond", "--status", "succeeded", "--since", "1h",
                               "--json"], catch_exceptions=False)
    listed = [json.loads(line) for line in res.stdout.splitlines()]
    assert [x["run_id"] for x in listed] == [run.run_id] and listed[0]["tenant_id"] == "acme"
    res = runner.invoke(main, ["runs", "--status", "failed"], catch_exceptions=False)
    assert res.exit_code == 0 and run.run_id not in res.stdout
    res = runner.invoke(main, ["runs", "--since", "yesterday"], catch_exceptions=False)
    assert res.exit_code == 2 and "--since" in res.stderr


def test_running_runs_lists_runs_still_running(client, audit):
    from taskplatform.audit import reads

    f = {"name": "audit-slow", "steps": {"w": {"uses": "wait.duration", "with": {"duration": "PT1S"}}}}
    run = client.submit(f)
    audit.flush()
    running = reads.running_runs(url=audit.url)
    assert [r["run_id"] for r in running] == [run.run_id]
    assert running[0]["execution_context"]["flow"]["name"] == "audit-slow"
    run.wait(timeout=30)
    audit.flush()
    assert reads.running_runs(url=audit.url) == []


def test_handlers_did_not_fail():
    from taskplatform.audit import failure_count

    assert failure_count() == 0


def test_revoked_message_leaves_a_revoked_row(client, audit):
    import time
    import uuid

    run = client.submit("hello", {"who": "revoke"})
    run.wait(timeout=30)
    task_id = uuid.uuid4().hex
    client.app.control.revoke(task_id)
    deadline = time.monotonic() + 20  # the broadcast is pub/sub: wait until the worker has it
    def listed() -> bool:
        revoked = client.app.control.inspect(timeout=0.5).revoked() or {}
        return any(task_id in ids for ids in revoked.values())

    while not listed():
        assert time.monotonic() < deadline, "the worker never listed the revoke"
    _redeliver(client, run.run_id, "greet", task_id)
    deadline = time.monotonic() + 20
    while True:
        rows = [r for r in audit.run(run.run_id)["steps"] if r["task_id"] == task_id]
        if rows or time.monotonic() > deadline:
            break
    assert [(r["status"], r["error_type"]) for r in rows] == [("revoked", "Revoked")]
    assert audit.run(run.run_id)["status"] == "succeeded"
