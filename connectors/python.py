"""``python.call``: call a function by import path (``pkg.module:name``), sync or async.

Async functions run on an event loop of their own. The output is the return value, as is
(it must be JSON-serialisable). ``TransientError`` raised by the function is retried; any
other exception fails the step.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from pydantic import Field, field_validator

from connectors.base import Connector, With
from taskplatform.errors import PermanentError

FUNCTION_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class CallWith(With):
    function: str = Field(pattern=FUNCTION_PATTERN)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("function", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value


def load_function(path: str) -> Any:
    """Import ``pkg.module:attr.sub`` and return the object; PermanentError if missing."""
    module_name, _, attr_path = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PermanentError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise PermanentError(f"{path!r} is not callable")
    return obj


class Call(Connector):
    """Call a Python function with args and kwargs."""

    name = "python.call"
    With = CallWith

    def execute_action(self, inputs: CallWith) -> Any:
        function = load_function(inputs.function)
        result = function(*inputs.args, **inputs.kwargs)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
