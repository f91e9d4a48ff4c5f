"""Recovery, dead letters, cancel and resume on the in-process worker (fast; the fault tests
in test_faults.py do the same with killed `celery worker` processes).

Stuck states are made the way faults make them: a run's Redis state is left as a crash leaves
it (a step made ready but never published, a lease that expired with its process, every
step settled but the run never finished, the run's state gone), then one sweep drives it on.
"""

from __future__ import annotations

import time

import pytest

from taskplatform import recovery, secrets, signals
from taskplatform.errors import (
    DeadLetterNotFound,
    FlowFailed,
    PermanentError,
    RunLost,
    RunStateError,
    TransientError,
)
from taskplatform.flow import RetryPolicy
from taskplatform.runtime import should_retry
from taskplatform.state import StepStatus


@pytest.fixture(autouse=True)
def _test_redis_env(redis_server, monkeypatch):
    monkeypatch.setenv("TASKPLATFORM_TEST_REDIS", redis_server.url)


def _sweep(client, **kwargs):
    """A recovery sweep over this Redis's runs only (the shared audit may hold other tests' runs)."""
    return recovery.recover(client.engine, sources=[recovery.RedisRunSource()], **kwargs)


def _diamond(name: str = "rec") -> dict:
    def count(key: str, needs: list[str]) -> dict:
        return {"uses": "python.call", "needs": needs,
                "with": {"function": "tests.funcs:count", "kwargs": {"key": f"${{{{ run.id }}}}:{key}"}}}

    return {"name": name, "steps": {"a": count("a", []), "b": count("b", ["a"]), "c": count("c", ["a"]),
                                    "d": count("d", ["b", "c"])},
            "outputs": {"d": "${{ steps.d.output.calls }}"}}


def _calls(client, run_id: str, step: str) -> int:
    return int(client.engine.redis.get(f"test:count:{run_id}:{step}") or 0)


def _stall(client, run_id: str, step: str, detail: dict) -> None:
    """Leave ``step`` as a crash leaves it: not settled, needs met, no message anywhere."""
    client.engine.store.reopen(run_id, {step: 0}, {step: detail}, unsettled=1)


def test_a_ready_step_whose_message_was_lost_is_relaunched_in_a_join(client):
    run = client.submit(_diamond())
    run.wait(timeout=30)
    _stall(client, run.run_id, "d", {"status": "pending", "attempts": 0})
    assert run.status() == "running"
    report = _sweep(client, stale_after_s=0)
    assert report.relaunched == {run.run_id: ["d"]}
    # d ran once before we erased its trace, and once more now; its needs were not re-run.
    assert run.wait(timeout=30) == {"d": 2}
    assert [_calls(client, run.run_id, s) for s in "abcd"] == [1, 1, 1, 2]


def test_a_step_whose_lease_expired_with_its_worker_is_relaunched_at_once(client):
    run = client.submit(_diamond())
    run.wait(timeout=30)
    # The worker claimed d and died: its detail says running, its lease key has expired.
    _stall(client, run.run_id, "d", {"status": "running", "attempts": 1, "started_at": time.time()})
    report = _sweep(client)  # default stale_after: a lease expiry needs no wait
    assert report.relaunched == {run.run_id: ["d"]}
    run.wait(timeout=30)
    assert run.steps()["d"].attempts == 2


def test_a_fresh_ready_step_is_left_alone_until_stale(client):
    run = client.submit(_diamond())
    run.wait(timeout=30)
    _stall(client, run.run_id, "d", {"status": "pending", "attempts": 0})
    assert _sweep(client, stale_after_s=3600).relaunched == {}
    assert run.status() == "running"
    _sweep(client, stale_after_s=0)
    run.wait(timeout=30)


def test_a_run_whose_steps_all_settled_but_never_finished_is_finished(client):
    run = client.submit(_diamond())
    run.wait(timeout=30)
    store = client.engine.store
    state_key = f"run:{run.run_id}:state"
    store.r.hset(state_key, "status", "running")
    store.r.delete(f"run:{run.run_id}:done")
    store.r.zadd("runs:active", {run.run_id: time.time()})
    report = _sweep(client)
    assert report.finished == [run.run_id]
    assert run.wait(timeout=5) == {"d": 1}


def test_a_run_whose_redis_state_vanished_is_reported_lost_and_handed_to_the_hooks(client, monkeypatch):
    # Redis alone: with the audit on, its handler would rebuild the run (tests/audit/test_redrive.py).
    monkeypatch.setattr(client.engine.settings, "audit", False)
    seen: list[str] = []

    def handler(engine, run_id: str) -> None:
        seen.append(run_id)

    recovery.register_lost_run_handler(handler)
    try:
        run = client.submit({"name": "gone", "steps": {"w": {"uses": "wait.duration",
                                                             "with": {"duration": "PT30S"}}}})
        client.engine.redis.delete(f"run:{run.run_id}:state")  # what a restart without AOF leaves
        report = _sweep(client)
        assert run.run_id in report.lost and run.run_id in seen  # (other tests' runs may be too)
        assert run.run_id not in client.engine.store.active_runs()
        with pytest.raises(RunLost, match="vanished from Redis"):
            run.wait(timeout=5)
    finally:
        recovery._lost_run_handlers.remove(handler)


def test_sources_plug_in_once_by_name(monkeypatch):
    class Source:
        name = "elsewhere"

        def run_ids(self, engine):
            return ["r1"]

    monkeypatch.setattr(recovery, "_sources", list(recovery._sources))  # restored after the test
    recovery.register_run_source(Source())
    recovery.register_run_source(Source())
    assert [s.name for s in recovery._sources] == ["redis", "audit", "elsewhere"]  # audit: create_app


# --- retry policy -------------------------------------------------------------------------------


def test_should_retry_by_type_name_and_http_status():
    default = RetryPolicy()
    assert should_retry(default, TransientError("x")) and not should_retry(default, PermanentError("x"))
    assert should_retry(default, ConnectionError())
    by_status = RetryPolicy(retry_on=[404, 429])
    assert should_retry(by_status, PermanentError("nf", http_status=404))
    assert not should_retry(by_status, TransientError("5xx", http_status=503))
    by_name = RetryPolicy(retry_on=["ConnectorError"])  # any class in the error's hierarchy
    assert should_retry(by_name, PermanentError("x")) and not should_retry(by_name, ValueError())


# --- dead letters -------------------------------------------------------------------------------


def test_dead_letter_masks_secrets_and_replay_finishes_the_run(client):
    secret = "tok-3f9a-very-secret"
    secrets.register(secret)
    settled: list[tuple[str, str]] = []
    resumed: list[list[str]] = []

    def on_settled(sender, run_id, step_id, status, detail, **kw):
        settled.append((step_id, status))

    def on_resumed(sender, run_id, steps, **kw):
        resumed.append(steps)

    signals.step_settled.connect(on_settled, weak=False)
    signals.run_resumed.connect(on_resumed, weak=False)
    try:
        r = client.engine.redis
        r.set("test:gate", "closed")
        flow = {"name": "masked", "inputs": {"token": {"type": "string"}}, "steps": {
            "call": {"uses": "python.call", "with": {"function": "tests.funcs:fail_while",
                                                     "args": ["test:gate"],
                                                     "kwargs": {}}},
            "use": {"uses": "transform.set", "needs": ["call"],
                    "with": {"values": {"auth": "Bearer ${{ inputs.token }}"}}},
            "leak": {"uses": "python.call",
                     "with": {"function": "tests.funcs:boom", "args": ["bad token ${{ inputs.token }}"]}},
        }}
        run = client.submit(flow, {"token": secret})
        with pytest.raises(FlowFailed):
            run.wait(timeout=30)
        dlq = client.engine.dlq
        leak = dlq.get(f"{run.run_id}.leak")
        assert leak["inputs"]["args"] == ["bad token ***"]
        assert secret not in str(leak) and "***" in leak["error"] and "***" in leak["traceback"]
        assert ("leak", "dead_lettered") in settled and ("call", "dead_lettered") in settled
        assert ("use", "upstream_failed") in settled

        r.delete("test:gate")
        out = client.replay(f"{run.run_id}.call")
        assert out["steps"] == ["call", "use"] and resumed[-1] == ["call", "use"]
        with pytest.raises(FlowFailed) as err:  # leak is still dead-lettered: the run fails again
            run.wait(timeout=30)
        assert err.value.step == "leak"
        assert run.steps()["use"].status == "succeeded"
        with pytest.raises(DeadLetterNotFound):
            dlq.get(f"{run.run_id}.call")
        assert dlq.purge(flow="masked") == 1 and dlq.list(flow="masked") == []
    finally:
        signals.step_settled.disconnect(on_settled)
        signals.run_resumed.disconnect(on_resumed)
        secrets.forget_all()


def test_exhausted_transient_retries_dead_letter_with_attempts(client):
    flow = {"name": "exhaust", "steps": {"f": {
        "uses": "python.call", "retry": {"max_attempts": 2, "backoff_s": 0.05, "jitter": False},
        "with": {"function": "tests.funcs:flaky", "args": ["${{ run.id }}", 5]}}}}
    run = client.submit(flow)
    with pytest.raises(FlowFailed) as err:
        run.wait(timeout=30)
    assert err.value.step == "f"
    entry = client.engine.dlq.get(f"{run.run_id}.f")
    assert entry["attempts"] == 2 and entry["error_type"] == "TransientError"
    assert run.steps()["f"].status == StepStatus.DEAD_LETTERED.value


# --- cancel and resume --------------------------------------------------------------------------


def test_cancel_a_waiting_run_ends_it_canceled_and_sends_the_signals(client):
    finished: list[str] = []

    def on_finished(sender, run_id, status, outputs, error, **kw):
        finished.append(status)

    signals.run_finished.connect(on_finished, weak=False)
    try:
        run = client.submit({"name": "c", "steps": {
            "w": {"uses": "wait.duration", "with": {"duration": "PT60S"}},
            "after": {"uses": "transform.set", "needs": ["w"], "with": {"values": {}}}}})
        # wait.duration defers (no worker slot held): the step is "waiting", not running.
        deadline = time.monotonic() + 10
        while run.steps()["w"].status != "waiting" and time.monotonic() < deadline:
            client.engine.store.wait_done(run.run_id, 0.05)
        assert run.cancel("no longer needed") == ["w", "after"]
        with pytest.raises(FlowFailed) as err:
            run.wait(timeout=5)
        assert err.value.status == "canceled" and "no longer needed" in err.value.error
        assert finished == ["canceled"]
        with pytest.raises(RunStateError):
            run.cancel()
    finally:
        signals.run_finished.disconnect(on_finished)


def test_resume_refuses_running_and_succeeded_runs(client):
    run = client.submit(_diamond("res"))
    run.wait(timeout=30)
    with pytest.raises(RunStateError, match="only failed or canceled"):
        run.resume()


def test_cli_dlq_replay_by_flow_replays_every_entry_of_that_flow(client, redis_server, monkeypatch):
    from click.testing import CliRunner

    from taskplatform.cli import main

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    r = client.engine.redis
    r.set("test:gate2", "closed")
    flow = {"name": "replay-by-flow", "steps": {"g": {
        "uses": "python.call", "with": {"function": "tests.funcs:fail_while", "args": ["test:gate2"]}}}}
    runs = [client.submit(flow) for _ in range(3)]
    for run in runs:
        with pytest.raises(FlowFailed):
            run.wait(timeout=30)
    runner = CliRunner()
    listed = runner.invoke(main, ["dlq", "list", "--flow", "replay-by-flow"])
    assert listed.exit_code == 0 and "3 entries" in listed.output
    r.delete("test:gate2")
    done = runner.invoke(main, ["dlq", "replay", "--flow", "replay-by-flow"])
    assert done.exit_code == 0, done.output
    assert done.output.count("replayed ") == 3
    for run in runs:
        assert run.wait(timeout=30) == {}
    assert client.engine.dlq.list(flow="replay-by-flow") == []
    usage = runner.invoke(main, ["dlq", "replay"])
    assert usage.exit_code == 2 and "give an entry id or --flow" in usage.output
