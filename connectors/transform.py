"""``transform.jmespath`` (query data) and ``transform.set`` (build a mapping)."""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath import exceptions as jp_exc
from pydantic import field_validator

from connectors.base import Connector, With
from taskplatform import defaults
from taskplatform.errors import PermanentError


class JmespathWith(With):
    data: Any = None
    expression: str

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if "${{" in value:  # resolved at run time: checked then
            return value
        try:
            jmespath.compile(value)
        except jp_exc.JMESPathError as exc:
            raise ValueError(f"malformed JMESPath expression {value!r}: {exc}") from None
        return value


class Jmespath(Connector):
    """Query ``data`` with a JMESPath ``expression``; the output is the result."""

    name = "transform.jmespath"
    queue = defaults.QUEUE_CPU
    With = JmespathWith

    def execute_action(self, inputs: JmespathWith) -> Any:
        try:
            return jmespath.search(inputs.expression, inputs.data)
        except jp_exc.JMESPathError as exc:
            raise PermanentError(f"JMESPath {inputs.expression!r} failed: {exc}") from exc


class SetWith(With):
    values: dict[str, Any]


class Set(Connector):
    """Return ``values`` (expressions inside are resolved): a named bag of results."""

    name = "transform.set"
    queue = defaults.QUEUE_CPU
    With = SetWith

    def execute_action(self, inputs: SetWith) -> dict[str, Any]:
        return inputs.values
