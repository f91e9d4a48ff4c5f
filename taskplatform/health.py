"""Health checks behind ``/health``: a small registry of named checks, run with a timeout each.

A check returns a :class:`CheckResult`: ``ok``, ``failing`` or ``not_configured`` (a part the
deployment does not use, such as a database when ``DATABASE_URL`` is unset, is not a failure).
The worker registers ``broker``, ``database`` and ``worker``; another part of the platform can
:func:`register` its own (the audit replaces ``database`` with a check on its engine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from taskplatform import defaults
from taskplatform.secrets import redact_text

OK, FAILING, NOT_CONFIGURED = "ok", "failing", "not_configured"


@dataclass
class CheckResult:
    status: str
    detail: str = ""
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in ("", None, {})}
        if "detail" in data:
            data["detail"] = redact_text(data["detail"])
        return data


Check = Callable[[], CheckResult]

_checks: dict[str, Check] = {}
_lock = threading.Lock()
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="taskplatform-health")


def register(name: str, check: Check, *, replace: bool = True) -> None:
    """Add the check called ``name``; with ``replace=False`` keep one registered before."""
    with _lock:
        if replace or name not in _checks:
            _checks[name] = check


def unregister(name: str) -> None:
    with _lock:
        _checks.pop(name, None)


def registered() -> list[str]:
    with _lock:
        return sorted(_checks)


def _timed(check: Check) -> CheckResult:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - a check that raises is a failing check
        result = CheckResult(FAILING, f"{type(exc).__name__}: {exc}")
    if result.latency_ms is None:
        result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return result


def run_checks(timeout_s: float = defaults.HEALTH_CHECK_TIMEOUT_S) -> tuple[bool, dict[str, Any]]:
    """Run every check concurrently; (healthy, JSON body). Healthy: no check failing."""
    with _lock:
        checks = dict(_checks)
    futures = {name: _pool.submit(_timed, check) for name, check in checks.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            result = future.result(timeout=timeout_s)
        except FutureTimeout:
            result = CheckResult(FAILING, f"no answer within {timeout_s:g}s")
        results[name] = result.as_dict()
    healthy = all(r["status"] != FAILING for r in results.values())
    return healthy, {"status": "ok" if healthy else "failing", "checks": results}


# --- built-in checks -------------------------------------------------------------------------------


def redis_check(redis_url: str, *, timeout_s: float = 1.0) -> Check:
    """PING the broker with short timeouts (a fresh connection pool, not the workers')."""
    import redis  # noqa: PLC0415

    from taskplatform.config import client_url_for  # noqa: PLC0415

    client = redis.Redis.from_url(client_url_for(redis_url), socket_connect_timeout=timeout_s,
                                  socket_timeout=timeout_s)

    def check() -> CheckResult:
        try:
            client.ping()
        except redis.RedisError as exc:
            client.connection_pool.disconnect()
            return CheckResult(FAILING, f"{type(exc).__name__}: {exc}")
        return CheckResult(OK)

    return check


def database_check(settings: Any) -> Check:
    """``SELECT 1`` on the audit's database (``DATABASE_URL``, or the SQLite default), through the
    audit's own engine; not configured when the audit is switched off."""

    def check() -> CheckResult:
        if not settings.audit:
            return CheckResult(NOT_CONFIGURED, "the audit is switched off (TASKPLATFORM_AUDIT=0)")
        from sqlalchemy import text  # noqa: PLC0415

        from taskplatform.audit import db  # noqa: PLC0415

        with db.get_engine(db.database_url(settings.database_url)).connect() as conn:
            conn.execute(text("SELECT 1"))
        return CheckResult(OK)

    return check
