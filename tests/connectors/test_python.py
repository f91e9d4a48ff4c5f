"""``python.call``: sync and async functions by import path."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import ValidationError

from connectors.base import StepContext, reset_current_step, set_current_step
from connectors.python import Call, load_function
from taskplatform.errors import PermanentError, TransientError

MOD = "tests.connectors.sample_funcs"


@pytest.fixture
def python() -> Call:
    return Call()


def test_sync_function(python, call):
    assert call(python, function=f"{MOD}:add", args=[2, 3]) == 5


def test_args_and_kwargs(python, call):
    assert call(python, function=f"{MOD}:add", args=[2], kwargs={"b": 3, "scale": 10}) == 50
    out = call(python, function=f"{MOD}:echo", args=[1, "two", [3]], kwargs={"k": {"v": None}})
    assert out == {"args": [1, "two", [3]], "kwargs": {"k": {"v": None}}}


def test_no_arguments_and_none_result(python, call):
    assert call(python, function=f"{MOD}:nothing") is None


def test_stdlib_function(python, call):
    assert call(python, function="os.path:join", args=["a", "b"]) == "a/b"


def test_dotted_attribute_path(python, call):
    assert call(python, function=f"{MOD}:Namespace.double", args=[21]) == 42


def test_function_path_is_stripped(python, call):
    assert call(python, function=f"  {MOD}:add \n", args=[1, 1]) == 2


def test_async_function_runs_on_its_own_loop(python, call):
    first = call(python, function=f"{MOD}:async_add", args=[2], kwargs={"b": 5})
    second = call(python, function=f"{MOD}:async_add", args=[1, 1])
    assert first["sum"] == 7 and second["sum"] == 2
    assert first["thread"] == threading.get_ident()  # run in the calling thread
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # and no loop is left running (or set) afterwards


def test_async_function_in_a_fresh_thread(python, call):
    result: dict = {}

    def work() -> None:
        result.update(call(python, function=f"{MOD}:async_add", args=[40, 2]))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    assert result["sum"] == 42


def test_function_returning_an_awaitable(python, call):
    assert call(python, function=f"{MOD}:returns_coroutine", args=[{"x": 1}]) == {"x": 1}


def test_sees_the_current_step(python, call):
    token = set_current_step(StepContext(run_id="r1", step_id="s1", attempt=3))
    try:
        assert call(python, function=f"{MOD}:step_attempt") == 3
    finally:
        reset_current_step(token)


def test_missing_module_is_permanent(python, call):
    with pytest.raises(PermanentError, match="cannot import module 'tp_no_such_module_xyz'"):
        call(python, function="tp_no_such_module_xyz:f")


def test_missing_submodule_is_permanent(python, call):
    with pytest.raises(PermanentError, match="cannot import module"):
        call(python, function="tests.connectors.no_such_module:f")


def test_missing_attribute_is_permanent(python, call):
    with pytest.raises(PermanentError, match=r"has no attribute 'no_such_function'"):
        call(python, function=f"{MOD}:no_such_function")


def test_missing_nested_attribute_is_permanent(python, call):
    with pytest.raises(PermanentError, match=r"has no attribute 'Namespace.nope'"):
        call(python, function=f"{MOD}:Namespace.nope")


def test_not_callable_is_permanent(python, call):
    with pytest.raises(PermanentError, match="is not callable"):
        call(python, function=f"{MOD}:NOT_CALLABLE")


def test_load_function_directly():
    from tests.connectors import sample_funcs

    assert load_function(f"{MOD}:add") is sample_funcs.add
    with pytest.raises(PermanentError):
        load_function("tp_no_such_module_xyz:f")


def test_transient_error_propagates(python, call):
    with pytest.raises(TransientError, match="upstream busy"):
        call(python, function=f"{MOD}:flaky")


def test_transient_error_from_async_function_propagates(python, call):
    with pytest.raises(TransientError, match="async upstream busy"):
        call(python, function=f"{MOD}:async_flaky")


def test_permanent_error_propagates(python, call):
    with pytest.raises(PermanentError, match="will never work"):
        call(python, function=f"{MOD}:refuse")


def test_other_exceptions_propagate_unchanged(python, call):
    with pytest.raises(KeyError, match="boom"):
        call(python, function=f"{MOD}:broken")


def test_wrong_arguments_raise_type_error(python, call):
    with pytest.raises(TypeError):
        call(python, function=f"{MOD}:add", kwargs={"nope": 1})


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"function": "os.path.join"}, id="no-colon"),
        pytest.param({"function": "os:path:join"}, id="two-colons"),
        pytest.param({"function": ":join"}, id="no-module"),
        pytest.param({"function": "os:"}, id="no-attribute"),
        pytest.param({"function": "1os:join"}, id="bad-identifier"),
        pytest.param({"function": "os:join()"}, id="call-syntax"),
        pytest.param({"function": "os:join", "args": "a"}, id="args-not-list"),
        pytest.param({"function": "os:join", "kwargs": []}, id="kwargs-not-dict"),
        pytest.param({"function": "os:join", "extra": 1}, id="unknown-key"),
        pytest.param({}, id="no-function"),
    ],
)
def test_invalid_inputs(python, raw):
    with pytest.raises(ValidationError):
        python.parse_inputs(raw)


def test_metadata(python):
    assert python.name == "python.call"
    assert python.execution_mode == "sync"
