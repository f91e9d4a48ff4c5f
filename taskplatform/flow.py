"""The flow model: what a flow YAML file (or the Python builder) describes.

Pydantic checks the shape (unknown keys are errors); :mod:`taskplatform.validation` checks
the meaning (needs, cycles, connectors, expressions) before anything runs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskplatform import defaults

Queue = Literal["io", "cpu", "plan"]
InputType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
FLOW_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ERROR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Strict):
    """How often and how patiently a step is retried after a transient error."""

    max_attempts: int | None = Field(None, ge=1, le=1000)
    backoff_s: float | None = Field(None, ge=0)
    max_backoff_s: float | None = Field(None, ge=0)
    jitter: bool | None = None
    #: Which errors retry: error type names (any class in the error's hierarchy, e.g.
    #: ``TransientError``, ``StepTimedOut``) and HTTP statuses (``503``). Unset: transient
    #: errors only. Set: exactly these (a listed status retries even a permanent 4xx).
    retry_on: list[str | int] | None = None

    @field_validator("retry_on", mode="before")
    @classmethod
    def _retry_on_items(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, list):
            raise ValueError("retry_on must be a list of error type names and HTTP statuses")
        for i, item in enumerate(value):
            ok_status = isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599
            ok_name = isinstance(item, str) and re.fullmatch(ERROR_NAME_PATTERN, item) is not None
            if not (ok_status or ok_name):
                raise ValueError(f"retry_on[{i}]: {item!r} is neither an error type name "
                                 "(e.g. TransientError, StepTimedOut) nor an HTTP status (100-599)")
        return value

    def over(self, base: RetryPolicy) -> RetryPolicy:
        """This policy with unset fields taken from ``base``."""
        mine = self.model_dump(exclude_none=True)
        return base.model_copy(update=mine)


ENGINE_RETRY = RetryPolicy(
    max_attempts=defaults.RETRY_MAX_ATTEMPTS,
    backoff_s=defaults.RETRY_BACKOFF_S,
    max_backoff_s=defaults.RETRY_MAX_BACKOFF_S,
    jitter=defaults.RETRY_JITTER,
)


class StepDefaults(_Strict):
    """Flow-wide settings that every step inherits unless it sets its own."""

    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(None, gt=0)
    queue: Queue | None = None


class InputSpec(_Strict):
    """A declared flow input: its type, default and description."""

    type: InputType = "any"
    default: Any = None
    description: str = ""
    enum: list[Any] | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class Step(_Strict):
    """One step: which connector action it uses, with what, after which steps."""

    uses: str
    needs: list[str] = Field(default_factory=list)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    when: str | None = None
    queue: Queue | None = None
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(None, gt=0)
    description: str = ""

    @field_validator("needs", mode="before")
    @classmethod
    def _one_need(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Flow(_Strict):
    """A validated-in-shape flow: name, inputs, defaults, steps and outputs."""

    name: str = Field(pattern=FLOW_NAME_PATTERN)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    defaults: StepDefaults = Field(default_factory=StepDefaults)
    steps: dict[str, Step] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)

    def to_spec(self) -> dict[str, Any]:
        """The flow as plain JSON data (what is frozen into Redis at submit)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def retry_for(self, step_id: str) -> RetryPolicy:
        """The effective retry policy of a step: step, then flow defaults, then engine defaults."""
        policy = ENGINE_RETRY
        if self.defaults.retry is not None:
            policy = self.defaults.retry.over(policy)
        step_retry = self.steps[step_id].retry
        return step_retry.over(policy) if step_retry is not None else policy

    def timeout_for(self, step_id: str) -> float:
        """The soft time limit of one attempt of a step, in seconds."""
        step = self.steps[step_id]
        return step.timeout_s or self.defaults.timeout_s or defaults.STEP_TIMEOUT_S
