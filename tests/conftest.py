"""Shared fixtures: a private Redis, the app on it with an in-process worker, and e2e workers.

Every server here is ours (a unix socket in a temp folder): the machine's Redis on 6379 may be
shared with other processes and is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from taskplatform.audit import db, reads, spool
from taskplatform.audit.models import flow_run_history, task_execution_audit
from taskplatform.embedded import RedisServer, close_connections

ROOT = Path(__file__).resolve().parent.parent
# The machine's Postgres (CI starts it): each session makes its own database there.
PG_ADMIN_URL = os.environ.get("TASKPLATFORM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def audit_db_url() -> Iterator[str]:
    """A private Postgres database for this session, migrated; DATABASE_URL points at it.

    XDG_DATA_HOME moves to a temp folder too, so the embedded default's SQLite audit file of
    CLI subprocesses never lands in the user's home.
    """
    import psycopg

    name = f"tp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "XDG_DATA_HOME", "TASKPLATFORM_SECRETS_FILE")}
    data_home = tempfile.mkdtemp(prefix="taskplatform-xdg-")
    os.environ["DATABASE_URL"] = url
    os.environ["XDG_DATA_HOME"] = data_home
    # Secrets tests write here; workers read it at each step (see taskplatform/secret_source.py).
    secrets_file = Path(data_home) / "secrets.json"
    secrets_file.write_text("{}")
    os.environ["TASKPLATFORM_SECRETS_FILE"] = str(secrets_file)
    db.upgrade(db.database_url(url))
    yield url
    db.dispose_all()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    import shutil

    shutil.rmtree(data_home, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the in-process tests."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def engine_app(redis_server: RedisServer):
    """The module-level app, configured for the private Redis, with an in-process worker."""
    from taskplatform.app import app, configure
    from taskplatform.embedded import InProcessWorker
    from taskplatform.settings import Settings

    configure(app, Settings(redis_url=redis_server.url, flows_dir=ROOT / "flows",
                            database_url=os.environ["DATABASE_URL"]))
    worker = InProcessWorker(app, concurrency=8).start()
    yield app
    worker.stop()
    close_connections(app)


@pytest.fixture
def client(engine_app):
    """A Client on the in-process stack; run keys are removed after each test."""
    from taskplatform.client import Client

    c = Client(engine_app, flows_dir=ROOT / "flows")
    yield c
    _clean_runs(c.engine.redis)


def _clean_runs(r) -> None:
    for pattern in ("run:*", "runs", "runs:*", "test:*"):
        keys = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])


@pytest.fixture(scope="session")
def e2e_stack() -> Iterator[dict]:
    """A second private Redis with `celery -A taskplatform worker` subprocesses on it."""
    from taskplatform.app import configure, create_app
    from taskplatform.settings import Settings

    server = RedisServer().start()
    env = {**os.environ, "REDIS_URL": server.url, "TASKPLATFORM_TEST_REDIS": server.url,
           "PYTHONPATH": str(ROOT), "EXECUTOR_METRICS_PORT": "0", "TASKPLATFORM_DEPLOYMENT": "e2e"}
    logdir = ROOT / "test-artifacts"
    logdir.mkdir(exist_ok=True)
    log = open(logdir / "e2e-worker.log", "ab")  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "taskplatform", "worker", "-Q", "io,cpu,plan",
             "-P", "prefork", "-c", "4", "-n", f"e2e{i}@%h", "--without-mingle", "--without-gossip",
             "-l", "WARNING"],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )
        for i in range(1)
    ]
    app = create_app("taskplatform-e2e", set_as_current=False)
    configure(app, Settings(redis_url=server.url, flows_dir=ROOT / "flows",
                            database_url=os.environ["DATABASE_URL"], deployment="e2e"))
    _wait_for_workers(app, len(procs))
    yield {"app": app, "server": server, "procs": procs, "env": env}
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait(5)
    log.close()
    close_connections(app)
    server.stop()


def _wait_for_workers(app, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        if len(replies) >= n:
            return
    raise RuntimeError(f"{n} worker(s) did not answer a ping within {timeout_s:g}s "
                       "(see test-artifacts/e2e-worker.log)")


@pytest.fixture
def e2e_client(e2e_stack):
    from taskplatform.client import Client

    c = Client(e2e_stack["app"], flows_dir=ROOT / "flows")
    yield c
    _clean_runs(c.engine.redis)


# --- audit ------------------------------------------------------------------------------------


class Audit:
    """Reads of the audit database for assertions, after the spool is written."""

    def __init__(self, url: str) -> None:
        self.url = url

    def flush(self, timeout_s: float = 20.0) -> None:
        assert spool.flush_all(timeout_s), "audit spool did not drain"

    def run(self, run_id: str) -> dict:
        self.flush()
        row = reads.load_run(run_id, url=self.url)
        assert row is not None, f"no flow row for {run_id}"
        return row

    def count(self, table=task_execution_audit, **where) -> int:
        stmt = select(func.count()).select_from(table)
        for k, v in where.items():
            stmt = stmt.where(table.c[k] == v)
        with db.get_engine(self.url).connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def truncate(self) -> None:
        with db.get_engine(self.url).begin() as conn:
            conn.execute(delete(task_execution_audit))
            conn.execute(delete(flow_run_history))


@pytest.fixture
def audit(client, audit_db_url, redis_server):
    os.environ["TASKPLATFORM_TEST_REDIS"] = redis_server.url
    a = Audit(db.database_url(audit_db_url))
    a.flush()
    a.truncate()
    yield a
    a.flush()
    a.truncate()

