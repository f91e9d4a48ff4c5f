"""Audit fixtures: the session's Postgres database, flushed and emptied around each test."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import delete, func, select

from taskplatform.audit import db, reads, spool
from taskplatform.audit.models import flow_run_history, task_execution_audit


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


def attempts_by_step(run: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in sorted(run["steps"], key=lambda r: (r["step_id"], r["attempt"])):
        out.setdefault(row["step_id"], []).append(row)
    return out
