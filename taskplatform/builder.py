"""Build flows in Python; the result is the same :class:`Flow` a YAML file gives.

    b = FlowBuilder("order-digest", inputs={"order_id": {"type": "integer"}})
    fetch = b.step("fetch", "http.request", url=f"http://api/orders/{b.input('order_id')}")
    score = b.step("score", "python.call", needs=[fetch], function="mypkg.scoring:score",
                   kwargs={"order": fetch.output("json")})
    b.output("total", score.output("total"))
    flow = b.build()   # validated; raises FlowValidationError like a YAML file would
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.base import Registry
from taskplatform.flow import Flow
from taskplatform.validation import validate_flow


def expr(path: str) -> str:
    """``expr("inputs.x")`` -> ``"${{ inputs.x }}"``."""
    return "${{ " + path + " }}"


@dataclass(frozen=True)
class StepRef:
    """A step added to a builder: pass it in ``needs``; ``output()`` refers to its output."""

    id: str

    def output(self, path: str = "") -> str:
        return expr(f"steps.{self.id}.output" + (f".{path}" if path else ""))

    def status(self) -> str:
        return expr(f"steps.{self.id}.status")


class FlowBuilder:
    """Accumulates steps and outputs; :meth:`build` validates and returns the Flow."""

    def __init__(self, name: str, *, description: str = "", inputs: dict[str, Any] | None = None,
                 defaults: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {"name": name, "steps": {}}
        if description:
            self.data["description"] = description
        if inputs:
            self.data["inputs"] = inputs
        if defaults:
            self.data["defaults"] = defaults

    @staticmethod
    def input(name: str) -> str:
        return expr(f"inputs.{name}")

    def step(self, step_id: str, uses: str, *, needs: list[StepRef | str] | None = None,
             when: str | None = None, queue: str | None = None, retry: dict[str, Any] | None = None,
             timeout_s: float | None = None, **with_: Any) -> StepRef:
        """Add a step; keyword arguments other than the options are its ``with:`` block."""
        step: dict[str, Any] = {"uses": uses}
        if needs:
            step["needs"] = [n.id if isinstance(n, StepRef) else n for n in needs]
        if with_:
            step["with"] = with_
        for key, value in (("when", when), ("queue", queue), ("retry", retry), ("timeout_s", timeout_s)):
            if value is not None:
                step[key] = value
        self.data["steps"][step_id] = step
        return StepRef(step_id)

    def output(self, name: str, value: Any) -> None:
        self.data.setdefault("outputs", {})[name] = value

    def build(self, registry: Registry | None = None) -> Flow:
        return validate_flow(self.data, source=f"<builder {self.data['name']}>", registry=registry)
