"""Event application rules, on real Postgres: order, precedence, folding, superseding, sweeping."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from taskplatform.audit import db, events, sweeper
from taskplatform.audit.models import task_execution_audit as attempts


def _attempt(status, attempt=1, at=1.0, **extra):
    return {"kind": "attempt", "at": at, "run_id": "r1", "step_id": "s", "attempt": attempt,
            "task_id": "t", "status": status, **extra}


def _rows(conn):
    return [dict(r._mapping) for r in conn.execute(select(attempts).order_by(attempts.c.attempt))]


@pytest.fixture
def conn(audit):
    with db.get_engine(audit.url).begin() as c:
        yield c
        c.rollback()


SEQUENCE = [
    _attempt("started", input_data={"a": 1}, expires_at=100.0),
    _attempt("succeeded", at=2.0, output_data={"b": 2}, execution_time_ms=5.0),
    _attempt("started", at=3.0, input_data={"late": True}, expires_at=100.0),  # late duplicate
]


def test_one_by_one_and_batched_give_the_same_row(conn):
    for e in SEQUENCE:
        events.apply(conn, dict(e))
    one_by_one = _rows(conn)
    conn.execute(attempts.delete())
    events.apply_batch(conn, [dict(e) for e in SEQUENCE])
    batched = _rows(conn)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "id"} for r in rows]  # noqa: E731
    assert strip(one_by_one) == strip(batched)
    (row,) = batched
    assert row["status"] == "succeeded"  # a final status is never taken back by `started`
    assert row["input_data"] == {"a": 1} and row["output_data"] == {"b": 2}
    assert row["expires_at"] is None and row["completed_at"] is not None


def test_a_new_attempt_closes_an_earlier_one_left_started(conn):
    events.apply(conn, _attempt("started", attempt=1, expires_at=100.0))
    events.apply(conn, _attempt("started", attempt=2, at=5.0, expires_at=100.0))
    first, second = _rows(conn)
    assert (first["status"], first["error_type"]) == ("failed", "WorkerLost")
    assert second["status"] == "started"


def test_sweeper_settles_only_overdue_started_rows(conn):
    events.apply(conn, _attempt("started", attempt=1, expires_at=100.0))
    events.apply(conn, {**_attempt("started", attempt=1, expires_at=500.0), "step_id": "other"})
    assert sweeper.sweep(conn, now_s=50.0) == 0
    assert sweeper.sweep(conn, now_s=200.0) == 1
    statuses = {r["step_id"]: (r["status"], r["error_type"]) for r in _rows(conn)}
    assert statuses == {"s": ("failed", "WorkerLost"), "other": ("started", None)}
    # The real outcome, arriving late, still wins over the sweep.
    events.apply(conn, _attempt("succeeded", attempt=1, at=300.0))
    row = {r["step_id"]: r for r in _rows(conn)}["s"]
    assert (row["status"], row["error_type"], row["error_message"]) == ("succeeded", None, None)


def test_a_drainer_that_lost_its_lock_does_not_trim(audit, redis_server, monkeypatch):
    from taskplatform.audit import spool
    from taskplatform.audit.spool import AuditSink

    monkeypatch.setattr(spool, "DRAIN_IN_THIS_PROCESS", False)  # only the drains below

    class Slow(AuditSink):
        steal = True

        def _write_batch(self, batch):
            super()._write_batch(batch)
            if self.steal:
                self.redis.set(self.lock_key, "someone-else")  # our lock expired; another took it

    sink = Slow(audit.url, redis_server.url, prefix="test:lostlock:")
    try:
        sink.emit(_attempt("started", expires_at=100.0))
        assert sink.drain() == 0 and sink.pending() == 1  # written, but left for the new holder
        sink.redis.delete(sink.lock_key)
        sink.steal = False
        assert sink.drain() == 1 and sink.pending() == 0
    finally:
        sink.redis.delete(sink.key, sink.lock_key)
        sink.close()


def _private_sink(audit, redis_server, monkeypatch, name):
    from taskplatform.audit import spool

    monkeypatch.setattr(spool, "DRAIN_IN_THIS_PROCESS", False)  # only the drains below
    return spool.AuditSink(audit.url, redis_server.url, prefix=f"test:{name}:")


def _steps_written(audit, run_id):
    with db.get_engine(audit.url).connect() as c:
        return [(r.step_id, r.status) for r in c.execute(
            select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.step_id))]


def test_an_event_redis_refuses_is_written_directly(audit, redis_server, monkeypatch):
    """Pushes do not wait for their reply: a refusal, read at the next push, is not a loss."""
    sink = _private_sink(audit, redis_server, monkeypatch, "refused")
    try:
        sink.redis.set(sink.key, "not a list")  # every RPUSH now gets a WRONGTYPE error reply
        sink.emit(_attempt("succeeded", run_id="refused", step_id="a"))
        assert sink.counters.direct == 0  # not waited for ...
        sink.redis.delete(sink.key)
        sink.emit(_attempt("succeeded", run_id="refused", step_id="b"))
        assert sink.counters.direct == 1  # ... read at the next push: written directly
        assert sink.drain() == 1  # b went through the spool
        assert _steps_written(audit, "refused") == [("a", "succeeded"), ("b", "succeeded")]
    finally:
        sink.redis.delete(sink.key, sink.lock_key)
        sink.close()


def test_a_connection_lost_with_replies_unread_pushes_those_events_again(audit, redis_server, monkeypatch):
    sink = _private_sink(audit, redis_server, monkeypatch, "dropped")
    try:
        conn, unread = sink._connection()
        conn.send_command("CLIENT", "SETNAME", "audit-test-pusher")
        conn.read_response()
        sink.emit(_attempt("succeeded", run_id="dropped", step_id="a"))
        assert len(unread) == 1
        # The server drops our connection (a restart, a proxy timeout) before we read a reply.
        admin = redis_server.client()
        (mine,) = [c["id"] for c in admin.client_list() if c["name"] == "audit-test-pusher"]
        admin.client_kill_filter(_id=mine)
        sink.emit(_attempt("succeeded", run_id="dropped", step_id="b"))
        assert sink._connection()[0] is not conn  # remade
        assert sink.pending() in (2, 3)  # a once or twice (unknown whether Redis had it), then b
        sink.drain()
        assert _steps_written(audit, "dropped") == [("a", "succeeded"), ("b", "succeeded")]
        assert sink.counters.direct == 0
    finally:
        sink.redis.delete(sink.key, sink.lock_key)
        sink.close()


def test_a_full_spool_moves_its_oldest_events_to_disk_and_they_are_written_first(
        audit, redis_server, monkeypatch, tmp_path):
    """While the database is away the spool stays bounded; on return the order holds."""
    from taskplatform.audit import spool

    monkeypatch.setattr(spool, "DRAIN_IN_THIS_PROCESS", False)
    prefix = "test:overflow:"
    writer = spool.AuditSink(audit.url, redis_server.url, prefix=prefix, sweep=True,
                             spool_max=20, overflow_dir=tmp_path / "overflow")
    other = spool.AuditSink(audit.url, redis_server.url, prefix=prefix)  # an API process, say
    try:
        for i in range(50):  # a chain: step s00 started, succeeded, then s01, ...
            status = "started" if i % 2 == 0 else "succeeded"
            writer.emit(_attempt(status, run_id="spilled", step_id=f"s{i // 2:02d}", at=float(i),
                                 expires_at=1e10))
        writer._read_replies(*writer._connection())  # the pushes are in
        assert writer.pending() == 50
        assert writer.spill() == 34 and writer.pending() == 16  # down to 80% of the cap
        files = writer.overflow_files()
        assert files and sum(len(f.read_text().splitlines()) for f in files) == 34
        assert writer.redis.hlen(writer.overflow_key) == 1
        # Another drainer leaves the spool alone while older events wait on disk ...
        assert other.drain() == 0 and other.pending() == 16
        # ... the writer writes the files first, then the spool.
        assert writer.drain() == 50
        assert writer.overflow_files() == [] and writer.redis.hlen(writer.overflow_key) == 0
        with db.get_engine(audit.url).connect() as c:
            rows = c.execute(select(attempts.c.step_id, attempts.c.status).where(
                attempts.c.run_id == "spilled").order_by(attempts.c.id)).all()
        assert [r.step_id for r in rows] == [f"s{i:02d}" for i in range(25)]  # inserted in order
        assert {r.status for r in rows} == {"succeeded"}
        assert (writer.counters.spilled, writer.counters.replayed) == (34, 34)
    finally:
        writer.redis.delete(writer.key, writer.lock_key, writer.overflow_key)
        writer.close()
        other.close()


def test_a_vanished_hosts_stale_overflow_does_not_hold_the_spool(audit, redis_server, monkeypatch):
    sink = _private_sink(audit, redis_server, monkeypatch, "stale")
    try:
        sink.redis.hset(sink.overflow_key, "gone-host:/data", f"{time.time():.3f}")
        sink.emit(_attempt("succeeded", run_id="stale", step_id="a"))
        sink._read_replies(*sink._connection())
        assert sink.drain() == 0  # fresh: held
        sink.redis.hset(sink.overflow_key, "gone-host:/data", "1.0")  # heartbeat long ago
        assert sink.drain() == 1
    finally:
        sink.redis.delete(sink.key, sink.lock_key, sink.overflow_key)
        sink.close()


def test_writers_sharing_an_overflow_folder_share_its_entry(audit, redis_server, monkeypatch, tmp_path):
    """Containers on one volume: whichever writer drains first writes the other's files too."""
    from taskplatform.audit import spool

    monkeypatch.setattr(spool, "DRAIN_IN_THIS_PROCESS", False)
    a, b = (spool.AuditSink(audit.url, redis_server.url, prefix="test:shared:", sweep=True,
                            spool_max=10, overflow_dir=tmp_path / "shared") for _ in range(2))
    try:
        for i in range(20):
            a.emit(_attempt("succeeded", run_id="shared", step_id=f"s{i:02d}"))
        a._read_replies(*a._connection())
        assert a.spill() == 12 and a.redis.hlen(a.overflow_key) == 1
        assert b.drain() == 20  # not held by a's entry: it is its own folder's
        assert b.overflow_files() == [] and b.redis.hlen(b.overflow_key) == 0
        assert len(_steps_written(audit, "shared")) == 20
    finally:
        a.redis.delete(a.key, a.lock_key, a.overflow_key)
        a.close()
        b.close()
