"""Faults: Postgres stopped mid-run, a worker child killed mid-step, a worker on an old schema.

A private Postgres cluster, a private Redis and a `celery -A taskplatform worker` subprocess
(its own session, so a kill reaches only it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from taskplatform.audit import db
from taskplatform.audit.models import task_execution_audit
from taskplatform.audit.spool import sink_for
from tests.conftest import ROOT, _wait_for_workers
from tests.pg_cluster import PostgresCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SPOOL_MAX = 100


def _start_worker(env: dict, log_name: str) -> subprocess.Popen:
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    with open(ROOT / "test-artifacts" / log_name, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "taskplatform", "worker", "-Q", "io,cpu,plan",
             "-P", "prefork", "-c", "2", "-n", f"fault-{os.getpid()}@%h", "--without-mingle",
             "--without-gossip", "-l", "WARNING"],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def cluster():
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    pg = PostgresCluster().init().start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="module")
def stack(cluster):
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.embedded import RedisServer, close_connections
    from taskplatform.settings import Settings

    url = cluster.create_database("audit")
    sa_url = db.database_url(url)
    db.upgrade(sa_url)
    server = RedisServer().start()
    overflow = server.dir / "audit-overflow"  # removed with the server
    # A small spool cap, so that the outage below also moves events to disk.
    env = {**os.environ, "REDIS_URL": server.url, "DATABASE_URL": url,
           "TASKPLATFORM_TEST_REDIS": server.url, "PYTHONPATH": str(ROOT),
           "TASKPLATFORM_AUDIT_SPOOL_MAX_EVENTS": str(SPOOL_MAX),
           "TASKPLATFORM_AUDIT_OVERFLOW_DIR": str(overflow)}
    proc = _start_worker(env, "fault-worker.log")
    app = create_app("taskplatform-fault", set_as_current=False)
    configure(app, Settings(redis_url=server.url, database_url=url, flows_dir=ROOT / "flows"))
    _wait_for_workers(app, 1)
    client = Client(app)
    yield {"client": client, "url": sa_url, "cluster": cluster, "server": server, "proc": proc,
           "sink": sink_for(sa_url, server.url), "overflow": overflow}
    _stop(proc)
    from taskplatform.audit.spool import close_sinks

    close_sinks(redis_url=server.url)
    close_connections(app)
    server.stop()


def _rows(url: str, run_id: str) -> list[dict]:
    with db.get_engine(url).connect() as conn:
        stmt = (select(task_execution_audit).where(task_execution_audit.c.run_id == run_id)
                .order_by(task_execution_audit.c.id))
        return [dict(r._mapping) for r in conn.execute(stmt)]


def _wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_postgres_stopped_mid_run_loses_and_duplicates_no_row(stack):
    """200 steps while Postgres is down; the spool (capped at 100 events) spills to disk."""
    client, url, sink, pg = stack["client"], stack["url"], stack["sink"], stack["cluster"]
    overflow = stack["overflow"]
    chains, length = 4, 50  # 200 steps
    steps = {}
    for c in range(chains):
        for i in range(length):
            step = {"uses": "python.call", "with": {"function": "tests.funcs:slow_count",
                                                     "kwargs": {"key": f"outage-{c}", "seconds": 0.01}}}
            if i:
                step["needs"] = [f"c{c}s{i - 1}"]
            steps[f"c{c}s{i}"] = step
    run = client.submit({"name": "outage", "steps": steps})
    store = client.engine.store
    _wait_until(lambda: store.settled_count(run.run_id) >= 20, 60, "20 steps to settle")
    pg.stop("immediate")
    try:
        settled_at_stop = store.settled_count(run.run_id)
        run.wait(timeout=180)  # the engine does not need Postgres
        assert settled_at_stop < chains * length
        # The worker's audit writer keeps the spool near its cap: the oldest events go to disk.
        _wait_until(lambda: list(overflow.glob("*.jsonl")), 30, "events moved to overflow files")
        _wait_until(lambda: sink.pending() <= SPOOL_MAX, 30, "the spool back under its cap")
        spilled = sum(len(f.read_text().splitlines()) for f in overflow.glob("*.jsonl"))
        print(f"[audit outage] {spilled} events on disk, {sink.pending()} in Redis (cap {SPOOL_MAX})")
        assert sink.pending() > 0  # the newest events wait in Redis
    finally:
        pg.start()
    assert sink.flush(60)  # this process drains only once the writer has written the files
    assert not list(overflow.glob("*.jsonl"))
    rows = _rows(url, run.run_id)
    assert len(rows) == chains * length
    assert {r["step_id"] for r in rows} == set(steps)
    assert {(r["status"], r["attempt"]) for r in rows} == {("succeeded", 1)}
    # Written in order: along each chain, a step's row was inserted before the next one's.
    ids = {r["step_id"]: r["id"] for r in rows}
    for c in range(chains):
        chain_ids = [ids[f"c{c}s{i}"] for i in range(length)]
        assert chain_ids == sorted(chain_ids)
    flow_row = __import__("taskplatform.audit.reads", fromlist=["load_run"]).load_run(run.run_id, url=url)
    assert flow_row["status"] == "succeeded" and flow_row["completed_at"] is not None


def _start_sleepy(stack, key: str):
    client, url = stack["client"], stack["url"]
    f = {"name": "killed", "steps": {"sleepy": {
        "uses": "python.call", "timeout_s": 20, "retry": {"max_attempts": 1},
        "with": {"function": "tests.funcs:pid_and_sleep", "kwargs": {"key": key, "seconds": 60}}}}}
    run = client.submit(f)
    r = client.engine.redis
    _wait_until(lambda: r.get(f"test:pid:{key}") is not None, 30, "the step to start")
    # The worker's audit writer process writes the row (this test does not flush here).
    import psutil

    kids = psutil.Process(stack["proc"].pid).children()
    assert any("taskplatform.audit.drainer" in " ".join(k.cmdline()) for k in kids)
    _wait_until(lambda: any(x["status"] == "started" for x in _rows(url, run.run_id)), 20, "a started row")
    return run, int(r.get(f"test:pid:{key}"))


def test_kill_9_of_a_worker_child_mid_step_ends_its_row_at_once(stack):
    """The main process sees the child die (task_retry_on_worker_lost): the row says so."""
    url = stack["url"]
    run, pid = _start_sleepy(stack, "kill9-child")
    (row,) = [x for x in _rows(url, run.run_id) if x["status"] == "started"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: {x["id"]: x for x in _rows(url, run.run_id)}[row["id"]]["status"] != "started",
                20, "the killed attempt's row to end")
    after = {x["id"]: x for x in _rows(url, run.run_id)}[row["id"]]
    print(f"[audit] killed attempt's row ended {time.monotonic() - killed:.2f}s after kill -9")
    assert after["status"] == "failed" and after["error_type"] == "WorkerLostError"
    assert "SIGKILL" in after["error_message"] and after["completed_at"] is not None
    assert stack["proc"].poll() is None  # the worker itself lives on (a new child replaced it)
    run.cancel()  # the retried attempt would sleep a minute


def test_kill_9_of_the_whole_worker_leaves_no_row_started_forever(stack):
    """Nobody is left to see the attempt end: the sweeper settles its row after its deadline."""
    url, sink = stack["url"], stack["sink"]
    run, _pid = _start_sleepy(stack, "kill9-group")
    os.killpg(stack["proc"].pid, signal.SIGKILL)  # main process, pool and audit writer
    stack["proc"].wait(10)
    (row,) = [x for x in _rows(url, run.run_id) if x["status"] == "started"]
    # Its deadline is bounded: start + hard time limit (20 s + grace) + the abandon margin.
    assert (row["expires_at"] - row["created_at"]).total_seconds() < 20 + 15 + 61
    # The sweeper (every worker's drainer runs it every 30 s) leaves it alone until then ...
    assert sink.run_sweep() == 0
    # ... and settles it once the deadline has passed.
    assert sink.run_sweep(now_s=row["expires_at"].timestamp() + 1) >= 1
    after = {x["id"]: x for x in _rows(url, run.run_id)}[row["id"]]
    assert after["status"] == "failed" and after["error_type"] == "WorkerLost"


def test_worker_on_an_old_schema_refuses_to_start(cluster):
    url = cluster.create_database("old_schema")  # no `db upgrade`
    from taskplatform.embedded import RedisServer

    server = RedisServer().start()
    try:
        env = {**os.environ, "REDIS_URL": server.url, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "taskplatform", "worker", "-P", "solo", "-l", "WARNING"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, start_new_session=True)
        assert done.returncode != 0
        assert "schema revision none" in done.stderr and "manage.py db upgrade" in done.stderr
        api = subprocess.run(
            [sys.executable, "-c", "from taskplatform import submit_flow; submit_flow('hello')"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert api.returncode != 0 and "manage.py db upgrade" in api.stderr
    finally:
        server.stop()
