"""/health: 200 with every check ok, 503 while Redis is down, 200 again once it is back."""

from __future__ import annotations

import os

import pytest

from taskplatform import health
from taskplatform.embedded import RedisServer
from taskplatform.health import FAILING, NOT_CONFIGURED, OK, CheckResult
from tests.ops_support import ops_worker, wait_until


@pytest.mark.e2e
def test_health_follows_redis_down_and_back():
    server = RedisServer().start()
    try:
        with ops_worker(server.url, name="health", pool="threads", concurrency=2) as worker:
            code, body = worker.health()
            assert code == 200, body
            assert body["status"] == "ok"
            assert body["checks"]["broker"]["status"] == OK
            assert body["checks"]["worker"]["status"] == OK
            assert body["checks"]["worker"]["extra"]["queues"] == ["cpu", "io", "plan"]
            assert body["checks"]["database"]["status"] == OK  # the session's Postgres

            server.stop(keep_dir=True)  # the same socket path comes back on restart
            code, body = wait_until(lambda: (h := worker.health())[0] == 503 and h,
                                    timeout_s=30, what="/health to answer 503")
            assert body["status"] == "failing"
            assert body["checks"]["broker"]["status"] == FAILING
            assert "Error" in body["checks"]["broker"]["detail"]

            server.start()
            code, body = wait_until(lambda: (h := worker.health())[0] == 200 and h,
                                    timeout_s=60, what="/health to answer 200 again")
            assert body["checks"]["broker"]["status"] == OK
            assert worker.proc.poll() is None  # the worker lived through the outage
    finally:
        server.stop()


@pytest.fixture
def only_new_checks():
    """An empty check registry for the test; the registered checks come back afterwards."""
    saved = {name: health._checks[name] for name in health.registered()}
    for name in saved:
        health.unregister(name)
    yield
    for name in health.registered():
        health.unregister(name)
    for name, check in saved.items():
        health.register(name, check)


def test_checks_registry_statuses_and_timeouts(only_new_checks):
    health.register("fine", lambda: CheckResult(OK))
    health.register("unused", lambda: CheckResult(NOT_CONFIGURED, "not set"))
    healthy, body = health.run_checks()
    assert healthy and body["status"] == "ok"
    assert body["checks"]["unused"] == {"status": NOT_CONFIGURED, "detail": "not set",
                                        "latency_ms": body["checks"]["unused"]["latency_ms"]}

    def raises() -> CheckResult:
        raise ConnectionError("refused")

    health.register("fine", raises, replace=False)  # keeps the first one
    assert health.run_checks()[0]
    health.register("broken", raises)
    healthy, body = health.run_checks()
    assert not healthy and body["checks"]["broken"]["status"] == FAILING
    assert body["checks"]["broken"]["detail"] == "ConnectionError: refused"


def test_database_check_follows_the_audit_settings(only_new_checks):
    from taskplatform.settings import Settings

    assert health.database_check(Settings(audit=False))().status == NOT_CONFIGURED
    assert health.database_check(Settings(database_url=os.environ["DATABASE_URL"]))().status == OK
    unreachable = Settings(database_url="postgresql://postgres@127.0.0.1:1/nothing")
    health.register("database", health.database_check(unreachable))
    ok, body = health.run_checks()
    assert not ok and body["checks"]["database"]["status"] == FAILING
    assert "127.0.0.1" in body["checks"]["database"]["detail"]


def test_check_details_are_redacted():
    from taskplatform import secrets

    secrets.register("hunter2-db-password")
    try:
        result = CheckResult(FAILING, "could not connect as user:hunter2-db-password@db")
        assert "hunter2" not in str(result.as_dict())
    finally:
        secrets.forget_all()
