"""Functions test flows call with ``python.call``; side effects are counted in the test Redis."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from connectors.base import current_step
from taskplatform.errors import PermanentError, TransientError


def _r() -> redis.Redis:
    return redis.Redis.from_url(os.environ["TASKPLATFORM_TEST_REDIS"])


def node(name: str, got: dict[str, Any] | None = None, fail: bool = False) -> dict[str, Any]:
    """A DAG node: logs its execution, takes a sequence number, echoes what it received."""
    run_id = current_step().run_id
    r = _r()
    seq = r.incr(f"test:{run_id}:seq")
    r.rpush(f"test:{run_id}:log", name)
    if fail:
        raise PermanentError(f"injected failure in {name}")
    return {"name": name, "seq": seq, "got": got or {}}


def count(key: str, value: Any = None) -> dict[str, Any]:
    """Count a side effect under ``key``."""
    return {"calls": _r().incr(f"test:count:{key}"), "value": value}


def slow_count(key: str, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return count(key)


def flaky(key: str, failures: int) -> dict[str, Any]:
    """Fail transiently ``failures`` times, then succeed."""
    calls = _r().incr(f"test:flaky:{key}")
    if calls <= failures:
        raise TransientError(f"flaky call {calls} of {failures} planned failures")
    return {"calls": calls}


def boom(message: str = "boom") -> None:
    raise ValueError(message)


def not_json() -> object:
    return object()


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def fail_while(flag_key: str) -> dict[str, Any]:
    """Fail permanently while the Redis key ``flag_key`` exists (a test opens the gate)."""
    if _r().exists(flag_key):
        raise PermanentError(f"gate {flag_key} is closed")
    return {"passed": True}


def ignore_soft_limit(seconds: float) -> dict[str, Any]:
    """Misbehave: swallow the soft time limit and keep going (only the hard limit stops this)."""
    from billiard.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            _r().incr("test:soft-limit-ignored")
    return {"slept": seconds}


def leak(token: str) -> None:
    """Misbehave with a secret: log it, print it, and fail with it in the message."""
    import logging

    logging.getLogger("tests.leak").warning("using token %s", token)
    print(f"printed token {token}")
    raise ValueError(f"token {token} rejected")


def pid_and_sleep(key: str, seconds: float) -> dict[str, Any]:
    """Publish this process's pid under ``test:pid:<key>``, then sleep (a step to kill -9)."""
    _r().set(f"test:pid:{key}", os.getpid())
    time.sleep(seconds)
    return {"slept_s": seconds}


def hold_gil(key: str, seconds: int) -> dict[str, Any]:
    """Count a side effect, then hold the GIL in C code for ``seconds`` (no thread of this
    process runs meanwhile, as with a long C extension call that never releases it)."""
    import ctypes

    calls = _r().incr(f"test:count:{key}")
    ctypes.PyDLL(None).sleep(int(seconds))  # PyDLL: the call keeps the GIL
    return {"calls": calls}
