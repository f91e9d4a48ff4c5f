"""Faults, end to end: `celery worker` subprocesses, `celery beat`, a private Redis, real HTTP.

Retries with measured backoff, dead letters and replay, kill -9 of a pool child and of the
whole worker group under 100 concurrent runs (every side effect exactly once), Redis restarts
with and without AOF, poison messages on every queue, cancel and resume.

The stack is tuned so that recovery takes seconds: step leases of 3 s (renewed every 1 s),
a visibility timeout of 10 s, and a recovery sweep every 2 s that re-launches ready steps
left unclaimed for 5 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskplatform.embedded import RedisServer, close_connections
from taskplatform.errors import FlowFailed
from tests.faults import Beat, CountingServer, Workers, wait_for_workers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
LOGDIR = ROOT / "test-artifacts"
TUNING = {
    "TASKPLATFORM_LEASE_TTL_S": "3",
    "TASKPLATFORM_VISIBILITY_TIMEOUT_S": "10",
    "TASKPLATFORM_RECOVERY_INTERVAL_S": "2",
    "TASKPLATFORM_RECOVERY_STALE_AFTER_S": "5",
}


def _settings(url: str, **extra):
    from taskplatform.settings import Settings

    return Settings(redis_url=url, flows_dir=ROOT / "flows", lease_ttl_s=3, visibility_timeout_s=10,
                    recovery_interval_s=2, recovery_stale_after_s=5, **extra)


class Stack:
    """A private Redis with one worker group and beat on it, and a client in this process."""

    def __init__(self, name: str, *, appendonly: bool = False, beat: bool = True) -> None:
        from taskplatform.app import configure, create_app
        from taskplatform.client import Client

        LOGDIR.mkdir(exist_ok=True)
        self.server = RedisServer(appendonly=appendonly).start()
        self.env = {**os.environ, "REDIS_URL": self.server.url, "TASKPLATFORM_TEST_REDIS": self.server.url,
                    "PYTHONPATH": str(ROOT), "TASKPLATFORM_DEPLOYMENT": f"faults-{name}", **TUNING}
        self.log = LOGDIR / f"faults-{name}.log"
        self.workers = Workers(self.env, self.log, name=name).start()
        self.beat = Beat(self.env, self.log, self.server.dir) if beat else None
        self.app = create_app(f"faults-{name}", set_as_current=False)
        configure(self.app, _settings(self.server.url, deployment=f"faults-{name}"))
        self.client = Client(self.app, flows_dir=ROOT / "flows")
        wait_for_workers(self.app)

    def restart_workers(self) -> None:
        self.workers.start()
        wait_for_workers(self.app)

    def close(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        self.workers.stop()
        close_connections(self.app)
        self.server.stop()


@pytest.fixture(scope="module")
def stack():
    s = Stack("main")
    yield s
    s.close()


@pytest.fixture(scope="module")
def http():
    with CountingServer() as server:
        yield server


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


# --- retries ------------------------------------------------------------------------------------


def test_flaky_endpoint_succeeds_on_attempt_3_with_the_configured_backoff(stack, http):
    flow = {"name": "flaky", "steps": {"call": {
        "uses": "http.request",
        "retry": {"max_attempts": 3, "backoff_s": 0.5, "max_backoff_s": 10, "jitter": False},
        "with": {"url": f"{http.url}/flaky?key=flaky1&fail=2&status=503"},
    }}}
    run = stack.client.submit(flow)
    run.wait(timeout=60)
    step = run.steps()["call"]
    assert (step.status, step.attempts) == ("succeeded", 3)
    assert stack.client.engine.store.outputs(run.run_id)["call"]["status"] == 200
    t = http.hit_times["flaky1"]
    gaps = [round(b - a, 3) for a, b in zip(t, t[1:], strict=False)]
    print(f"[retry] gaps between attempts: {gaps} s (configured 0.5 s then 1.0 s)")
    assert len(gaps) == 2
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0  # exponential: backoff_s * 2**(attempt-1)
    assert gaps[1] > gaps[0]


def test_retry_on_by_http_status_overrides_the_default(stack, http):
    # 404 is permanent by default; listed in retry_on it retries. 503 unlisted does not.
    flow = {"name": "retry-on", "defaults": {"retry": {"max_attempts": 3, "backoff_s": 0.1, "jitter": False}},
            "steps": {
                "nf": {"uses": "http.request", "retry": {"retry_on": [404]},
                       "with": {"url": f"{http.url}/flaky?key=ro404&fail=1&status=404"}},
                "un": {"uses": "http.request", "retry": {"retry_on": [429]},
                       "with": {"url": f"{http.url}/flaky?key=ro503&fail=5&status=503"}},
            }}
    run = stack.client.submit(flow)
    with pytest.raises(FlowFailed):
        run.wait(timeout=60)
    steps = run.steps()
    assert (steps["nf"].status, steps["nf"].attempts) == ("succeeded", 2)
    assert (steps["un"].status, steps["un"].attempts) == ("dead_lettered", 1)
    assert http.hits["ro503"] == 1


# --- dead letters -------------------------------------------------------------------------------


def test_permanent_failure_dead_letters_and_replay_completes_the_same_run(stack, http):
    from taskplatform.errors import FlowFailed

    flow = {"name": "dlq-replay", "inputs": {"order": {"type": "integer"}}, "steps": {
        "prep": {"uses": "http.request", "with": {"url": f"{http.url}/hit?key=prep", "headers": {
            "Idempotency-Key": "${{ run.id }}:prep"}}},
        "push": {"uses": "http.request", "needs": ["prep"], "with": {
            "method": "POST", "url": f"{http.url}/perm?key=push", "json": {"order": "${{ inputs.order }}"}}},
        "after": {"uses": "http.request", "needs": ["push"], "with": {"url": f"{http.url}/hit?key=after"}},
    }, "outputs": {"pushed": "${{ steps.push.output.status }}"}}
    run = stack.client.submit(flow, {"order": 7})
    with pytest.raises(FlowFailed) as err:
        run.wait(timeout=60)
    assert err.value.step == "push" and "HTTP 400" in err.value.error
    assert {k: v.status for k, v in run.steps().items()} == {
        "prep": "succeeded", "push": "dead_lettered", "after": "upstream_failed"}

    listed = json.loads(_manage(["dlq", "list", "--json", "--flow", "dlq-replay"], stack.env).stdout)
    (entry,) = [e for e in listed["entries"] if e["run_id"] == run.run_id]
    shown = json.loads(_manage(["dlq", "show", entry["id"]], stack.env).stdout)
    assert shown["flow"] == "dlq-replay" and shown["step_id"] == "push" and shown["action"] == "http.request"
    assert shown["inputs"]["json"] == {"order": 7} and shown["inputs"]["method"] == "POST"
    assert shown["error_type"] == "PermanentError" and "HTTP 400" in shown["error"]
    assert "PermanentError" in shown["traceback"]
    assert shown["attempts"] == 1 and shown["failed_at"] >= shown["first_started_at"] > 0

    http.fixed = True
    done = _manage(["dlq", "replay", entry["id"]], stack.env)
    assert done.returncode == 0, done.stderr
    assert run.wait(timeout=60) == {"pushed": 200}
    assert run.status() == "succeeded" and run.run_id == entry["run_id"]
    assert http.hits["prep"] == 1 and http.hits["after"] == 1  # prep kept its output; after ran once
    assert _manage(["dlq", "show", entry["id"]], stack.env).returncode == 6  # the entry is gone


# --- worker death under load --------------------------------------------------------------------


def _load_flow(url: str) -> dict:
    def hit(step: str, needs: list[str], delay_s: float) -> dict:
        return {"uses": "http.request", "needs": needs, "timeout_s": 20,
                "with": {"url": f"{url}/hit?key=${{{{ run.id }}}}:{step}&delay_s={delay_s}",
                         "headers": {"Idempotency-Key": f"${{{{ run.id }}}}:{step}"}}}

    return {"name": "load", "steps": {
        "start": hit("start", [], 0.05),
        "left": hit("left", ["start"], 0.15),     # fan-out ...
        "right": hit("right", ["start"], 0.1),
        "join": hit("join", ["left", "right"], 0.05),  # ... and join
    }}


def _check_exactly_once(stack, http, runs, killed_at: float) -> dict[str, float]:
    """Every step's effect applied once; returns counts and the recovery time of cut steps."""
    store = stack.client.engine.store
    dup_keys, total, cut_settled = 0, 0, [killed_at]
    for run in runs:
        assert run.status() == "succeeded", (run.run_id, run.info())
        details = store.step_details(run.run_id)
        for step in ("start", "left", "right", "join"):
            key = f"{run.run_id}:{step}"
            total += 1
            assert http.effects[key] == 1, f"{key}: effect applied {http.effects[key]} times"
            if details[step]["attempts"] > 1:
                cut_settled.append(details[step]["finished_at"])
            if http.hits[key] > 1:  # only a step whose attempt was cut by the kill runs twice
                dup_keys += 1
                assert details[step]["attempts"] > 1, (key, http.hits[key], details[step])
    return {"steps": total, "re_executed": dup_keys,
            "recovery_s": round(max(cut_settled) - killed_at, 2)}


def test_kill_9_pool_child_during_100_concurrent_runs(stack, http):
    runs = [stack.client.submit(_load_flow(http.url)) for _ in range(100)]
    wait_until(lambda: sum(http.hits.values()) >= 60, 60, "some steps to run")
    store = stack.client.engine.store

    def busy_child():  # a pool child in the middle of a step (its pid is in the step's detail)
        children = set(stack.workers.children())
        for run in runs:
            for sid, d in store.step_details(run.run_id).items():
                if d.get("status") == "running" and d.get("pid") in children:
                    return run, sid, d["pid"]
        return None

    cut_run, cut_step, victim = wait_until(busy_child, 30, "a pool child running a step", 0.0)
    killed_at, wall = time.monotonic(), time.time()
    os.kill(victim, 9)
    for run in runs:
        run.wait(timeout=120)
    took = time.monotonic() - killed_at
    stats = _check_exactly_once(stack, http, runs, wall)
    print(f"[kill child] all 100 runs succeeded {took:.1f}s after kill -9 of pool child {victim} "
          f"(it was running {cut_step}); {stats}")
    cut = store.step_details(cut_run.run_id)[cut_step]
    assert cut["attempts"] >= 2 or http.hits[f"{cut_run.run_id}:{cut_step}"] == 1  # re-run, or it had settled
    assert stack.workers.alive()


def test_kill_9_whole_worker_group_during_100_concurrent_runs(stack, http):
    runs = [stack.client.submit(_load_flow(http.url)) for _ in range(100)]
    wait_until(lambda: sum(http.hits[f"{r.run_id}:start"] for r in runs) >= 40, 60, "some steps to run")
    stack.workers.kill_group()
    killed_at, wall = time.monotonic(), time.time()
    in_flight = sum(1 for r in runs if r.status() == "running")
    stack.restart_workers()
    restarted = time.monotonic() - killed_at
    for run in runs:
        run.wait(timeout=180)
    took = time.monotonic() - killed_at
    stats = _check_exactly_once(stack, http, runs, wall)
    print(f"[kill group] {in_flight} runs in flight; worker back after {restarted:.1f}s; "
          f"all 100 runs succeeded {took:.1f}s after kill -9 of the group; {stats}")


def test_a_step_that_ignores_its_soft_limit_is_stopped_by_the_hard_limit_and_dead_lettered(stack):
    from taskplatform import defaults
    from taskplatform.errors import FlowFailed

    r = stack.client.engine.redis
    flow = {"name": "hard-limit", "steps": {"stubborn": {
        "uses": "python.call", "timeout_s": 1, "retry": {"max_attempts": 1},
        "with": {"function": "tests.funcs:ignore_soft_limit", "args": [120]}}}}
    run = stack.client.submit(flow)
    started = time.monotonic()
    with pytest.raises(FlowFailed) as err:
        run.wait(timeout=90)
    took = time.monotonic() - started
    assert err.value.step == "stubborn"
    assert "lost" in err.value.error and "hard time limit of 16s" in err.value.error
    assert int(r.get("test:soft-limit-ignored") or 0) >= 1  # the soft limit came first
    assert run.steps()["stubborn"].status == "dead_lettered"
    print(f"[hard limit] soft 1 s ignored, hard {1 + defaults.HARD_LIMIT_GRACE_S:g} s; "
          f"dead-lettered {took:.1f}s after submit")
    assert took < 60  # 16 s hard limit + lease + sweep, far from the step's 120 s
    # The audit: the main process's task_failure (hard time limit) ended the attempt's row;
    # the step's end has a row of its own.
    rows = _audit_rows(stack, run.run_id)
    assert [(x["attempt"], x["status"], x["error_type"]) for x in rows if x["status"] == "failed"] \
        == [(1, "failed", "TimeLimitExceeded")]
    assert [x["status"] for x in rows][-1] == "dead_lettered"
    assert not [x for x in rows if x["status"] == "started"]


def _audit_rows(stack: Stack, run_id: str) -> list[dict]:
    """The run's attempt rows in the session's audit database, once the spool is written."""
    from sqlalchemy import select

    from taskplatform.audit import db
    from taskplatform.audit.models import task_execution_audit as t
    from taskplatform.audit.spool import sink_for

    url = db.database_url(os.environ["DATABASE_URL"])
    assert sink_for(url, stack.server.url).flush(30), "audit spool did not drain"
    with db.get_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(t).where(t.c.run_id == run_id).order_by(t.c.id))]


def test_a_step_holding_the_gil_past_its_lease_still_runs_once(stack):
    """A C call that keeps the GIL for 3x the lease: no renewal can run in that process, but the
    lease must not lapse while the process lives (else recovery would start a duplicate)."""
    r = stack.client.engine.redis
    flow = {"name": "gil", "steps": {"hog": {
        "uses": "python.call", "timeout_s": 60,
        "with": {"function": "tests.funcs:hold_gil", "kwargs": {"key": "gil", "seconds": 10}}}}}
    run = stack.client.submit(flow)
    run.wait(timeout=90)
    time.sleep(3)  # a duplicate started late would count now
    assert int(r.get("test:count:gil")) == 1
    assert run.steps()["hog"].attempts == 1


# --- cancel and resume --------------------------------------------------------------------------


def test_cancel_stops_a_running_step_and_nothing_new_starts(stack, http):
    from taskplatform.errors import FlowFailed, RunStateError

    flow = {"name": "cancel-me", "steps": {
        "slow": {"uses": "shell.run", "timeout_s": 60, "with": {"argv": ["sleep", "30"]}},
        "quick": {"uses": "http.request", "with": {"url": f"{http.url}/hit?key=cancel-quick"}},
        "next": {"uses": "http.request", "needs": ["slow"],
                 "with": {"url": f"{http.url}/hit?key=cancel-next"}},
    }}
    run = stack.client.submit(flow)
    wait_until(lambda: run.steps()["slow"].status == "running", 30, "the slow step to start")
    asked = time.monotonic()
    done = _manage(["cancel", run.run_id, "--reason", "test says stop"], stack.env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(FlowFailed) as err:
        run.wait(timeout=20)
    took = time.monotonic() - asked
    assert err.value.status == "canceled" and "test says stop" in err.value.error
    steps = {k: v.status for k, v in run.steps().items()}
    assert steps["slow"] == "canceled" and steps["next"] == "canceled"
    assert http.hits["cancel-next"] == 0
    print(f"[cancel] run canceled {took:.2f}s after the cancel command (the step was sleeping 30 s)")
    assert took < 15  # far less than the 30 s the step would have slept
    with pytest.raises(RunStateError):
        run.cancel()
    # A canceled run can be resumed: the steps that did not succeed run to the end.
    flow_fast = run.resume()
    assert "slow" in flow_fast and "next" in flow_fast and "quick" not in flow_fast


def test_resume_reruns_only_what_did_not_succeed(stack, http):
    from taskplatform.errors import FlowFailed

    http.hits.clear()
    r = stack.client.engine.redis
    flow = {"name": "resume-me", "steps": {
        "a": {"uses": "http.request", "with": {"url": f"{http.url}/hit?key=res-a"}},
        "gate": {"uses": "python.call", "needs": ["a"],
                 "with": {"function": "tests.funcs:fail_while", "args": ["test:gate"]}},
        "b": {"uses": "http.request", "needs": ["gate"], "with": {"url": f"{http.url}/hit?key=res-b"}},
        "side": {"uses": "http.request", "needs": ["a"], "with": {"url": f"{http.url}/hit?key=res-side"}},
    }, "outputs": {"b": "${{ steps.b.output.status }}", "a": "${{ steps.a.output.json.hit }}"}}
    r.set("test:gate", "closed")
    run = stack.client.submit(flow)
    with pytest.raises(FlowFailed):
        run.wait(timeout=60)
    assert {k: v.status for k, v in run.steps().items()} == {
        "a": "succeeded", "gate": "dead_lettered", "b": "upstream_failed", "side": "succeeded"}
    r.delete("test:gate")
    done = _manage(["resume", run.run_id, "--wait", "--timeout", "60"], stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate, b" in done.stdout
    assert run.wait(timeout=10) == {"b": 200, "a": 1}  # a's output reused, not re-run
    assert (http.hits["res-a"], http.hits["res-b"], http.hits["res-side"]) == (1, 1, 1)


# --- poison messages ----------------------------------------------------------------------------


def test_poison_messages_on_every_queue_are_counted_and_the_worker_keeps_serving(stack, http):
    from taskplatform import defaults

    engine = stack.client.engine
    r, dlq = engine.redis, engine.dlq
    before = dlq.poison_counts()
    for queue in defaults.WORK_QUEUES:
        r.lpush(queue, b"\x00\xffnot json at all")  # undecodable body
        r.lpush(queue, json.dumps({"body": "!!!not base64", "headers": {"task": "x"},  # bad body encoding
                                   "content-type": "application/json", "content-encoding": "utf-8",
                                   "properties": {
                                       "delivery_tag": "x", "body_encoding": "base64",
                                       "delivery_info": {"routing_key": queue, "exchange": queue}}}))
        stack.app.send_task("no.such.task", args=[1], queue=queue)  # unknown task name
        stack.app.send_task("connectors.transform.set", args=[1, 2, 3], queue=queue)  # wrong arguments

    def counted():
        now = dlq.poison_counts()
        return all(now.get(q, 0) - before.get(q, 0) >= 3 for q in defaults.WORK_QUEUES) and now

    counts = wait_until(counted, 30, "poison messages to be counted on io, cpu and plan")
    print(f"[poison] counts per queue: {counts}")
    poison = dlq.list(kind="poison")
    assert any("unknown task 'no.such.task'" in e["error"] for e in poison)
    assert any("wrong arguments" in e["error"] for e in poison)
    assert stack.workers.alive()
    run = stack.client.submit({"name": "after-poison", "steps": {
        "a": {"uses": "http.request", "with": {"url": f"{http.url}/hit?key=after-poison"}}}})
    run.wait(timeout=30)

    listed = _manage(["dlq", "list"], stack.env)
    assert listed.returncode == 0 and "poison" in listed.stdout and "poison messages seen" in listed.stdout
    replay = _manage(["dlq", "replay", poison[0]["id"]], stack.env)
    assert replay.returncode == 1 and "poison message" in replay.stderr and "Traceback" not in replay.stderr
    purged = _manage(["dlq", "purge", "--yes"], stack.env)
    assert purged.returncode == 0 and "purged" in purged.stdout
    assert dlq.count() == 0 and dlq.poison_counts() == counts  # counters outlive a purge


def test_cli_recover_reports_a_sweep(stack):
    done = _manage(["recover", "--json"], stack.env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"checked", "relaunched", "finished", "lost", "took_s"}


# --- Redis restarts -----------------------------------------------------------------------------


def _redis_flow(url: str) -> dict:
    return {"name": "through-restart", "steps": {
        f"s{i}": {"uses": "http.request", "needs": [f"s{i - 1}"] if i else [],
                  "with": {"url": f"{url}/hit?key=${{{{ run.id }}}}:s{i}&delay_s=0.3",
                           "headers": {"Idempotency-Key": f"${{{{ run.id }}}}:s{i}"}}}
        for i in range(6)}}


def test_redis_restarted_with_aof_mid_run_the_runs_complete(http):
    s = Stack("aof", appendonly=True)
    try:
        runs = [s.client.submit(_redis_flow(http.url)) for _ in range(10)]
        wait_until(lambda: sum(http.hits[f"{r.run_id}:s1"] for r in runs) >= 3, 30, "runs to be under way")
        s.server.stop(keep_dir=True)  # SIGTERM: a clean shutdown that flushes the AOF
        down_at = time.monotonic()
        s.server.start()
        for run in runs:
            run.wait(timeout=120)
        took = time.monotonic() - down_at
        for run in runs:
            for i in range(6):
                assert http.effects[f"{run.run_id}:s{i}"] == 1
        print(f"[redis aof] 10 runs completed {took:.1f}s after the Redis restart")
    finally:
        s.close()


def test_redis_restarted_without_persistence_the_runs_are_driven_on_from_the_audit(http):
    s = Stack("nopersist")  # with beat: its sweep rebuilds lost runs from the audit
    try:
        runs = [s.client.submit(_redis_flow(http.url)) for _ in range(5)]
        wait_until(lambda: sum(http.hits[f"{r.run_id}:s1"] for r in runs) >= 2, 30, "runs to be under way")
        s.server.stop(keep_dir=True)
        down_at = time.monotonic()
        s.server.start()  # no AOF, no RDB: every key is gone
        for run in runs:
            run.wait(timeout=90)  # waits while the audit has it running; the sweep rebuilds it
        print(f"[redis lost] every run finished {time.monotonic() - down_at:.1f}s after the restart, "
              "rebuilt from the audit")
        for run in runs:  # every side effect exactly once (the server dedups by Idempotency-Key)
            assert all(http.effects[f"{run.run_id}:s{i}"] == 1 for i in range(6)), run.run_id
            assert s.client.engine.store.run_state(run.run_id).get("restored_from") == "audit"
        assert s.workers.alive()
    finally:
        s.close()


def test_redis_restarted_without_persistence_and_no_audit_no_client_waits_forever(http, monkeypatch):
    from taskplatform.errors import RunLost

    monkeypatch.setenv("TASKPLATFORM_AUDIT", "0")  # workers and client: nothing to rebuild from
    s = Stack("nopersist-noaudit", beat=False)
    try:
        runs = [s.client.submit(_redis_flow(http.url)) for _ in range(5)]
        wait_until(lambda: sum(http.hits[f"{r.run_id}:s1"] for r in runs) >= 2, 30, "runs to be under way")
        s.server.stop(keep_dir=True)
        down_at = time.monotonic()
        s.server.start()
        for run in runs:
            with pytest.raises(RunLost) as err:
                run.wait(timeout=60)
            assert "vanished from Redis" in str(err.value)
        took_s = time.monotonic() - down_at
        print(f"[redis lost] every waiting client got RunLost {took_s:.1f}s after the restart")
        assert s.workers.alive()
        # The platform still works on the fresh Redis.
        s.client.submit({"name": "fresh", "steps": {"a": {"uses": "transform.set",
                                                           "with": {"values": {"x": 1}}}}}).wait(timeout=60)
    finally:
        s.close()
