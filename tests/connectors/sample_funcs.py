"""Functions for the ``python.call`` tests (imported by path, ``tests.connectors.sample_funcs:...``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from connectors.base import current_step
from taskplatform.errors import PermanentError, TransientError

NOT_CALLABLE = 42


def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    return (a + b) * scale


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def nothing() -> None:
    return None


async def async_add(a: int, b: int = 0) -> dict[str, Any]:
    await asyncio.sleep(0)  # a real suspension point on the loop
    loop = asyncio.get_running_loop()
    return {"sum": a + b, "loop_id": id(loop), "thread": threading.get_ident()}


def returns_coroutine(value: Any) -> Any:
    """A plain function returning an awaitable: the connector awaits it too."""

    async def inner() -> Any:
        return value

    return inner()


def flaky() -> None:
    raise TransientError("upstream busy, try later")


async def async_flaky() -> None:
    raise TransientError("async upstream busy")


def refuse() -> None:
    raise PermanentError("will never work")


def broken() -> None:
    raise KeyError("boom")


def step_attempt() -> int:
    return current_step().attempt


class Namespace:
    """For dotted attribute paths: ``sample_funcs:Namespace.double``."""

    @staticmethod
    def double(x: int) -> int:
        return 2 * x
