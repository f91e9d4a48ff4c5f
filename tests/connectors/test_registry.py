"""The connector registry: discovery, lookup, plug-ins, broken modules, execution modes."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import connectors.base as base
from connectors.base import Connector, Registry, discover
from connectors.http import Request
from connectors.python import Call
from connectors.shell import Run
from connectors.transform import Jmespath, Set
from connectors.wait import Duration
from taskplatform import defaults
from taskplatform.errors import ConnectorNotFound
from taskplatform.runtime import execute

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = {
    "http.request": Request,
    "shell.run": Run,
    "python.call": Call,
    "transform.jmespath": Jmespath,
    "transform.set": Set,
    "wait.duration": Duration,
}

PLUGIN_SOURCE = textwrap.dedent('''
    from connectors.base import Connector, With
    from taskplatform import defaults


    class GreetWith(With):
        who: str


    class Greet(Connector):
        """Say hello."""

        name = "plugin.greet"
        With = GreetWith

        def execute_action(self, inputs):
            return {"greeting": f"hello {inputs.who}"}


    class AsyncPing(Connector):
        name = "plugin.ping"

        async def execute_action_async(self, inputs):
            return {"pong": inputs}


    class Crunch(Connector):
        name = "plugin.crunch"
        queue = defaults.QUEUE_CPU

        def execute_action(self, inputs):
            return sum(inputs["numbers"])


    class _Helper(Connector):
        """No name: not an action."""


    Imported = Connector  # the base class, re-exported: not an action either
''')


@pytest.fixture
def plugin(make_module) -> Any:
    return importlib.import_module(make_module("tp_test_plugin", PLUGIN_SOURCE))


# --- discovery ---------------------------------------------------------------------------------


def test_discover_finds_exactly_the_built_ins():
    registry = discover()
    assert set(registry.actions) == set(BUILT_IN)
    assert list(registry) == sorted(BUILT_IN)
    for name, cls in BUILT_IN.items():
        assert type(registry.get(name)) is cls
        assert name in registry
    assert registry.broken == {}


def test_discover_times_each_module():
    registry = discover()
    for module in ("connectors.http", "connectors.shell", "connectors.python", "connectors.transform",
                   "connectors.wait"):
        assert registry.load_seconds[module] >= 0
    assert "connectors.base" not in registry.load_seconds


def test_discover_returns_a_new_registry_each_time():
    first, second = discover(), discover()
    assert first is not second
    assert first.get("http.request") is not second.get("http.request")


def test_default_registry_is_cached(monkeypatch):
    monkeypatch.setattr(base, "_default", None)
    registry = base.default_registry()
    assert base.default_registry() is registry
    assert set(registry.actions) >= set(BUILT_IN)


def test_importing_a_connector_module_first_works():
    # A fresh interpreter whose first import is a connector module (a plug-in or a script
    # would do this): must not fail on the import cycle with taskplatform's app.
    code = ("import connectors.http\n"
            "from connectors.base import default_registry\n"
            "print(sorted(default_registry().actions))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == repr(sorted(BUILT_IN))


# --- lookup ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("http.reqest", "http.request"), ("shell.runn", "shell.run"),
     ("transform.jmespth", "transform.jmespath"), ("wait.durations", "wait.duration"),
     ("python.cal", "python.call")],
)
def test_unknown_name_suggests_the_closest(typo, suggestion):
    registry = discover()
    with pytest.raises(ConnectorNotFound) as info:
        registry.get(typo)
    assert info.value.name == typo
    assert f"did you mean {suggestion!r}?" in str(info.value)
    assert registry.suggest(typo) == suggestion


def test_unknown_name_without_a_close_match():
    registry = discover()
    with pytest.raises(ConnectorNotFound) as info:
        registry.get("zzz.qqq")
    assert str(info.value) == "unknown connector action 'zzz.qqq'"
    assert "zzz.qqq" not in registry


def test_connector_not_found_hides_the_key_error():
    with pytest.raises(ConnectorNotFound) as info:
        Registry().get("http.request")
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- broken modules and plug-ins ---------------------------------------------------------------


def test_broken_module_is_recorded_and_discovery_goes_on(make_module):
    name = make_module("tp_test_broken", "raise RuntimeError('broken on purpose')\n")
    registry = discover(extra_modules=[name, "tp_test_no_such_module_xyz"])
    assert set(registry.actions) == set(BUILT_IN)
    assert registry.broken[name] == "RuntimeError: broken on purpose"
    assert registry.broken["tp_test_no_such_module_xyz"].startswith("ModuleNotFoundError")
    assert name in registry.load_seconds


def test_broken_module_with_a_syntax_error(make_module):
    name = make_module("tp_test_syntax", "class Broken(:\n")
    registry = discover(extra_modules=[name])
    assert registry.broken[name].startswith("SyntaxError")
    assert set(registry.actions) == set(BUILT_IN)


def test_extra_module_adds_its_actions(plugin):
    registry = discover(extra_modules=[plugin.__name__])
    assert set(registry.actions) == set(BUILT_IN) | {"plugin.greet", "plugin.ping", "plugin.crunch"}
    assert registry.broken == {}


def test_entry_point_style_module_via_add_module(plugin):
    registry = Registry()
    registry.add_module(plugin)
    assert set(registry.actions) == {"plugin.greet", "plugin.ping", "plugin.crunch"}
    greet = registry.get("plugin.greet")
    assert execute(greet, greet.parse_inputs({"who": "ada"})) == {"greeting": "hello ada"}
    ping = registry.get("plugin.ping")
    assert ping.parse_inputs({"x": 1}) == {"x": 1}  # no With: the dict as is
    assert execute(ping, {"x": 1}) == {"pong": {"x": 1}}


def test_entry_point_style_single_class_via_add_module(plugin):
    registry = Registry()
    registry.add_module(plugin.Greet)
    assert list(registry) == ["plugin.greet"]
    assert registry.get("plugin.greet").description == ""


def test_add_module_ignores_the_base_class_and_unnamed_classes(plugin):
    registry = Registry()
    registry.add_module(Connector)
    registry.add_module(plugin._Helper)
    assert list(registry) == []


def test_add_module_ignores_imported_classes(make_module, plugin):
    name = make_module("tp_test_reexport", "from tp_test_plugin import Greet\n")
    registry = Registry()
    registry.add_module(importlib.import_module(name))
    assert list(registry) == []  # a class belongs to the module that defines it


def test_entry_points_are_loaded(monkeypatch, plugin):
    class FakeEntryPoint:
        name = "tp-test-plugin"

        def load(self) -> Any:
            return plugin

    class BrokenEntryPoint:
        name = "tp-test-broken"

        def load(self) -> Any:
            raise ImportError("missing dependency")

    def fake_entry_points(group: str) -> list[Any]:
        assert group == base.ENTRY_POINT_GROUP
        return [FakeEntryPoint(), BrokenEntryPoint()]

    monkeypatch.setattr(base, "entry_points", fake_entry_points)
    registry = discover()
    assert "plugin.greet" in registry and "http.request" in registry
    assert registry.broken == {"entry point tp-test-broken": "ImportError: missing dependency"}


# --- duplicates --------------------------------------------------------------------------------


def test_same_action_name_twice_raises():
    class First(Connector):
        name = "dup.action"

    class Second(Connector):
        name = "dup.action"

    registry = Registry()
    registry.add(First)
    with pytest.raises(ValueError, match="'dup.action' defined twice"):
        registry.add(Second)
    assert type(registry.get("dup.action")) is First


def test_built_in_name_redefined_raises():
    class Shadow(Connector):
        name = "http.request"

    registry = discover()
    with pytest.raises(ValueError, match="defined twice"):
        registry.add(Shadow)


def test_adding_the_same_class_again_is_fine():
    registry = Registry()
    registry.add(Request)
    registry.add(Request)
    assert list(registry) == ["http.request"]


def test_duplicate_in_a_plugin_module_is_recorded_as_broken(make_module):
    name = make_module("tp_test_dup", textwrap.dedent('''
        from connectors.base import Connector


        class ShadowShell(Connector):
            name = "shell.run"
    '''))
    registry = discover(extra_modules=[name])
    assert "defined twice" in registry.broken[name]
    assert type(registry.get("shell.run")) is Run  # the built-in stays


# --- execution modes ---------------------------------------------------------------------------


def test_execution_modes_of_the_built_ins():
    registry = discover()
    modes = {name: registry.get(name).execution_mode for name in registry}
    assert modes == {
        "http.request": "sync",
        "python.call": "sync",
        "shell.run": "sync",
        "transform.jmespath": "cpu",
        "transform.set": "cpu",
        "wait.duration": "sync",
    }
    queues = {name: registry.get(name).default_queue() for name in registry}
    assert queues["transform.jmespath"] == defaults.QUEUE_CPU
    assert queues["http.request"] == defaults.QUEUE_IO


def test_execution_modes_of_plugin_actions(plugin):
    registry = Registry()
    registry.add_module(plugin)
    assert registry.get("plugin.ping").execution_mode == "async"
    assert plugin.AsyncPing.is_async() is True
    assert registry.get("plugin.crunch").execution_mode == "cpu"
    assert registry.get("plugin.crunch").default_queue() == defaults.QUEUE_CPU
    assert registry.get("plugin.greet").execution_mode == "sync"
    assert plugin.Greet.is_async() is False


def test_async_wins_over_cpu():
    class AsyncCpu(Connector):
        name = "x.async_cpu"
        queue = defaults.QUEUE_CPU

        async def execute_action_async(self, inputs: Any) -> Any:
            return inputs

    assert AsyncCpu().execution_mode == "async"
    assert execute(AsyncCpu(), 5) == 5


def test_base_connector_is_abstract():
    connector = Connector()
    with pytest.raises(NotImplementedError):
        connector.execute_action({})
    assert connector.execution_mode == "sync"
