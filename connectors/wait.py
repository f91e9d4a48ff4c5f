"""``wait.duration``: wait an ISO 8601 duration (``PT2S``, ``PT5M``, ``P1D``).

Inside a flow the step does not hold a worker slot while it waits: it is re-published with a
countdown (in hops shorter than the broker's visibility timeout) and finishes once the time
has passed since its first start. The output is ``{waited_s}``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import isodate
from pydantic import field_validator

from connectors.base import Connector, Defer, With, current_step

MAX_WAIT_S = 366 * 24 * 3600


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration; ValueError with the reason when malformed."""
    try:
        value = isodate.parse_duration(text)
        if not any(c.isdigit() for c in text.rpartition("T")[2]):  # isodate takes "PT", "P1DT"
            raise ValueError("no number after T")
    except (isodate.ISO8601Error, ValueError, TypeError) as exc:
        raise ValueError(f"not an ISO 8601 duration: {text!r} (e.g. PT30S, PT5M, P1D)") from exc
    if isinstance(value, isodate.Duration):  # has months or years: relative to now
        now = dt.datetime.now(dt.UTC)
        try:
            seconds = ((now + value) - now).total_seconds()
        except ValueError as exc:  # fractional months or years
            raise ValueError(f"{text!r}: {exc}") from None
    else:
        seconds = value.total_seconds()
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    if seconds > MAX_WAIT_S:
        raise ValueError(f"duration longer than a year: {text!r}")
    return seconds


class DurationWith(With):
    duration: str

    @field_validator("duration")
    @classmethod
    def _parses(cls, value: str) -> str:
        if "${{" not in value:
            parse_duration(value)
        return value


class Duration(Connector):
    """Wait for a duration without holding a worker slot."""

    name = "wait.duration"
    With = DurationWith

    def execute_action(self, inputs: DurationWith) -> dict[str, Any]:
        total = parse_duration(inputs.duration)
        started = current_step().first_started_at
        remaining = started + total - time.time()
        if remaining > 0.005:
            raise Defer(remaining)
        return {"waited_s": round(time.time() - started, 3)}
