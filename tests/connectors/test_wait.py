"""``wait.duration``: ISO 8601 durations, and waiting by Defer instead of holding a slot."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from pydantic import ValidationError

from connectors.base import Defer, StepContext, current_step, reset_current_step, set_current_step
from connectors.wait import MAX_WAIT_S, Duration, parse_duration

DAY = 24 * 3600


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT2S", 2.0),
        ("PT1.5S", 1.5),
        ("PT0.25S", 0.25),
        ("PT5M", 300.0),
        ("PT1H30M", 5400.0),
        ("P1D", float(DAY)),
        ("P1DT2H", float(DAY + 7200)),
        ("P1W", float(7 * DAY)),
        ("PT0S", 0.0),
        ("P0D", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_months_are_calendar_months():
    seconds = parse_duration("P1M")
    assert 28 * DAY <= seconds <= 31 * DAY


def test_parse_duration_months_and_days():
    assert 28 * DAY + 3600 <= parse_duration("P1MT1H") <= 31 * DAY + 3600
    assert 30 * DAY <= parse_duration("P1M2D") <= 33 * DAY


def test_parse_duration_a_year_is_allowed():
    assert 365 * DAY <= parse_duration("P1Y") <= MAX_WAIT_S


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-PT5S", "negative"),
        ("-P1D", "negative"),
        ("PT-5S", "not an ISO 8601 duration"),
        ("garbage", "not an ISO 8601 duration"),
        ("", "not an ISO 8601 duration"),
        ("P", "not an ISO 8601 duration"),
        ("PT", "not an ISO 8601 duration"),
        ("P1DT", "not an ISO 8601 duration"),
        ("5s", "not an ISO 8601 duration"),
        ("2 seconds", "not an ISO 8601 duration"),
        ("PT5X", "not an ISO 8601 duration"),
        ("P1.5M", "fractional"),
        ("P2Y", "longer than a year"),
        ("P400D", "longer than a year"),
    ],
)
def test_parse_duration_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-PT5S", "garbage", "PT", "P2Y"])
def test_model_rejects_bad_durations(text):
    with pytest.raises(ValidationError):
        Duration().parse_inputs({"duration": text})


@pytest.mark.parametrize(
    "raw",
    [{}, {"duration": 5}, {"duration": "PT1S", "seconds": 1}],
    ids=["missing", "number", "unknown-key"],
)
def test_model_rejects_bad_inputs(raw):
    with pytest.raises(ValidationError):
        Duration().parse_inputs(raw)


def test_model_leaves_placeholders_for_run_time():
    assert Duration().parse_inputs({"duration": "${{ inputs.delay }}"}).duration == "${{ inputs.delay }}"


@contextmanager
def step_started(seconds_ago: float) -> Iterator[StepContext]:
    ctx = StepContext(run_id="run-1", step_id="pause", first_started_at=time.time() - seconds_ago)
    token = set_current_step(ctx)
    try:
        yield ctx
    finally:
        reset_current_step(token)


@pytest.fixture
def wait(call) -> Callable[[str], dict]:
    connector = Duration()
    return lambda duration: call(connector, duration=duration)


@pytest.mark.parametrize(("duration", "seconds"), [("PT2S", 2.0), ("PT5M", 300.0), ("P1D", float(DAY))])
def test_first_attempt_defers_for_the_whole_duration(wait, duration, seconds):
    with step_started(0), pytest.raises(Defer) as info:
        wait(duration)
    assert seconds - 1.0 <= info.value.delay_s <= seconds
    assert info.value.delay_s == pytest.approx(seconds, abs=1.0)


def test_later_attempt_defers_for_the_rest(wait):
    with step_started(60), pytest.raises(Defer) as info:
        wait("PT5M")
    assert info.value.delay_s == pytest.approx(240.0, abs=1.0)


@pytest.mark.parametrize(("duration", "seconds", "ago"), [("PT2S", 2.0, 3.0), ("PT1.5S", 1.5, 10.0),
                                                          ("PT5M", 300.0, 301.0)])
def test_done_once_the_duration_has_passed(wait, duration, seconds, ago):
    with step_started(ago):
        out = wait(duration)
    assert set(out) == {"waited_s"}
    assert out["waited_s"] >= seconds
    assert out["waited_s"] == pytest.approx(ago, abs=1.0)


def test_zero_duration_returns_at_once(wait):
    with step_started(0):
        assert wait("PT0S")["waited_s"] >= 0


def test_context_is_restored(wait):
    before = current_step()
    with step_started(100):
        assert current_step().step_id == "pause"
        wait("PT1S")
    assert current_step().step_id is None
    assert before.step_id is None


def test_defer_message_and_floor():
    assert str(Defer(1.5)) == "deferred for 1.500s"
    assert Defer(-3).delay_s == 0.0


def test_metadata():
    connector = Duration()
    assert connector.name == "wait.duration"
    assert connector.execution_mode == "sync"
    assert connector.default_queue() == "io"
