"""/metrics of real `celery worker` processes (prefork -c 4 and threads) after the examples run.

The expected counts come from the runs themselves (each step's final status, attempts and
whether it was executed), so a pool that undercounts (one child's samples only) fails.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from taskplatform.embedded import RedisServer, close_connections
from taskplatform.errors import FlowFailed
from tests.ops_support import ARTIFACTS, need_binary, ops_worker, samples, total
from tests.orders_server import OrdersServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent

FLAKY = {
    "name": "flaky-then-fine",
    "inputs": {"key": {"type": "string"}},
    "steps": {
        "flaky": {"uses": "python.call", "retry": {"max_attempts": 3, "backoff_s": 0.05, "jitter": False},
                  "with": {"function": "tests.funcs:flaky", "kwargs": {"key": "${{ inputs.key }}",
                                                                        "failures": 1}}},
        "after": {"uses": "transform.set", "needs": ["flaky"], "with": {"values": {"ok": True}}},
    },
}
BROKEN = {
    "name": "broken",
    "steps": {
        "boom": {"uses": "python.call", "with": {"function": "tests.funcs:boom"}},
        "never": {"uses": "transform.set", "needs": ["boom"], "with": {"values": {}}},
        "other": {"uses": "transform.set", "with": {"values": {"x": 1}}},
    },
}


def _client(redis_url: str):
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.settings import Settings

    app = create_app("metrics-test", set_as_current=False)
    configure(app, Settings(redis_url=redis_url, flows_dir=ROOT / "flows"))
    return app, Client(app, flows_dir=ROOT / "flows")


def _run_examples(client, orders_url: str, tag: str) -> list:
    """Every example (and a retried and a failing flow), submitted together; their handles."""
    submitted = [
        client.submit("hello", {}), client.submit("diamond", {"x": 5}),
        client.submit("branch", {}), client.submit("branch", {"threshold": 500}),
        client.submit("http", {"base_url": orders_url, "order_id": 2}),
        client.submit("http", {"base_url": orders_url, "order_id": 99}),  # 404: fails
        client.submit("report", {"base_url": orders_url}),
        client.submit(FLAKY, {"key": f"{tag}-1"}), client.submit(FLAKY, {"key": f"{tag}-2"}),
        client.submit(BROKEN, {}),
    ]
    submitted += [client.submit("diamond", {"x": i}) for i in range(8)]
    for run in submitted:
        try:
            run.wait(timeout=90)
        except FlowFailed:
            pass
    return submitted


def _expected(client, runs) -> dict[str, Counter]:
    exp: dict[str, Counter] = {k: Counter() for k in
                               ("success", "failure", "dead", "retry", "completed", "scheduled", "runs")}
    for run in runs:
        state = client.engine.store.run_state(run.run_id)
        flow = client.engine.run_spec(run.run_id).flow
        exp["runs"][(flow.name, state["status"])] += 1
        details = client.engine.store.step_details(run.run_id)
        for sid, step in flow.steps.items():
            d = details[sid]
            handler, status = step.uses, d["status"]
            exp["completed"][(handler, status)] += 1
            if "task_id" in d:  # executed by a worker (not settled by fan-in)
                exp["scheduled"][handler] += 1
            if status == "succeeded":
                exp["success"][handler] += 1
            if status in ("failed", "dead_lettered"):
                exp["failure"][(handler, d["error_type"])] += 1
            if status == "dead_lettered":
                exp["dead"][(handler, d["error_type"])] += 1
            if status == "succeeded" and int(d.get("attempts", 1)) > 1:
                exp["retry"][handler] += int(d["attempts"]) - 1
    return exp


@pytest.fixture(scope="module")
def orders():
    with OrdersServer() as server:
        yield server


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_metrics_count_every_step_in_every_pool_process(pool, orders, tmp_path):
    server = RedisServer().start()
    app, client = _client(server.url)
    multiproc_dir = tmp_path / "prom"
    try:
        with ops_worker(server.url, name=f"metrics-{pool}", pool=pool, concurrency=4,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}) as worker:
            runs = _run_examples(client, orders.url, pool)
            exp = _expected(client, runs)
            text = worker.metrics_text()
            (ARTIFACTS / f"metrics-{pool}.txt").write_text(text)
            parsed = samples(text)
            promtool = need_binary("promtool")
            lint = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                                  capture_output=True, timeout=30)
            assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        close_connections(app)
        server.stop()

    assert exp["retry"]["python.call"] == 2 and exp["failure"], exp  # the flows did what we meant
    for handler, n in exp["success"].items():
        assert total(parsed, "executor_task_success_count_total", handler=handler) == n, handler
        assert total(parsed, "executor_task_duration_seconds_count", handler=handler,
                     status="succeeded") == n, handler
    for (handler, error_type), n in exp["failure"].items():
        assert total(parsed, "executor_task_failure_count_total", handler=handler,
                     error_type=error_type) == n, (handler, error_type)
    assert total(parsed, "executor_task_failure_count_total") == sum(exp["failure"].values())
    assert total(parsed, "executor_task_retry_count_total", handler="python.call",
                 error_type="TransientError") == exp["retry"]["python.call"]
    assert total(parsed, "executor_task_duration_seconds_count", status="retrying") == 2
    for (handler, status), n in exp["completed"].items():
        assert total(parsed, "orchestrator_tasks_completed_total", handler=handler, status=status) == n
    for handler, n in exp["scheduled"].items():
        assert total(parsed, "orchestrator_tasks_scheduled_total", handler=handler) == n, handler
    for (flow, status), n in exp["runs"].items():
        assert total(parsed, "orchestrator_flow_runs_processed_total", flow=flow, status=status) == n
        assert total(parsed, "orchestrator_run_execution_seconds_count", flow=flow, status=status) == n
    assert total(parsed, "executor_active_tasks") == 0
    assert any(name == "taskplatform_audit_spool_events" for name, _labels in parsed)  # served
    for (handler, error_type), n in exp["dead"].items():
        assert total(parsed, "executor_task_dead_letter_count_total", handler=handler,
                     error_type=error_type) == n, (handler, error_type)
    assert total(parsed, "executor_task_dead_letter_count_total") == sum(exp["dead"].values())
    assert total(parsed, "executor_connector_load_seconds", connector="connectors.http") > 0
    # Labels are bounded: no run ids anywhere in the exposition.
    assert not any(run.run_id in text for run in runs)
    if pool == "prefork":
        # The samples were written by several pool children and summed by the main process.
        writers = {p.name.rsplit("_", 1)[1] for p in multiproc_dir.glob("counter_*.db")}
        assert len(writers) >= 2, writers


def test_audit_spool_gauge_reads_the_backlog_in_redis(redis_server, tmp_path):
    import redis

    from taskplatform import defaults
    from taskplatform.metrics import AuditSpoolCollector
    from taskplatform.state import RunStore

    client = redis.Redis.from_url(redis_server.url)
    store = RunStore(client, prefix="spooltest:")
    key = defaults.KEY_AUDIT_SPOOL.format(prefix="spooltest:")
    client.rpush(key, "e1", "e2", "e3")
    try:
        (family,) = list(AuditSpoolCollector(store).collect())
        assert family.name == "taskplatform_audit_spool_events"
        assert [s.value for s in family.samples] == [3]
        # With this host's overflow folder: what its audit writer moved to disk, in bytes.
        (tmp_path / "1-2.jsonl").write_text('{"kind":"attempt"}\n')
        (tmp_path / "1-3.tmp").write_text("half-written, not counted")
        disk, spooled = AuditSpoolCollector(store, tmp_path).collect()
        assert (disk.name, [s.value for s in disk.samples]) == ("taskplatform_audit_overflow_bytes", [19])
        assert [s.value for s in spooled.samples] == [3]
    finally:
        client.delete(key)
        client.close()


def test_metrics_folders_of_dead_workers_are_removed_at_start(tmp_path):
    import os
    import sys

    from taskplatform.worker_hooks import METRICS_DIR_PREFIX, remove_stale_metrics_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{gone.pid}-abc"
    alive = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{METRICS_DIR_PREFIX}notapid-ghi"
    for d in (dead, alive, other):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_dirs(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
