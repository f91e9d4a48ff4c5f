"""The connector interface and the registry that finds connectors.

A connector action is a class with a ``name`` (``"http.request"``), a ``With`` model that
describes its ``with:`` block, and ``execute_action(inputs)`` (or ``async
execute_action_async(inputs)``). The registry finds actions in the modules of this package
and in the entry-point group ``taskplatform.connectors``, so a separate package can add one::

    [project.entry-points."taskplatform.connectors"]
    mything = "mypkg.connectors"      # a module of Connector classes, or one class
"""

from __future__ import annotations

import contextvars
import difflib
import importlib
import inspect
import logging
import pkgutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from taskplatform import defaults
from taskplatform.errors import ConnectorNotFound

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "taskplatform.connectors"


class With(BaseModel):
    """Base for ``with:`` models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass(frozen=True)
class StepContext:
    """Where an action runs: the run and step (None outside a flow) and the attempt."""

    run_id: str | None = None
    step_id: str | None = None
    attempt: int = 1
    first_started_at: float = field(default_factory=time.time)
    timeout_s: float | None = None


_context: contextvars.ContextVar[StepContext] = contextvars.ContextVar("step_context")


def current_step() -> StepContext:
    """The context of the action running in this thread (a default one outside a flow)."""
    return _context.get(StepContext())


def set_current_step(ctx: StepContext) -> contextvars.Token[StepContext]:
    return _context.set(ctx)


def reset_current_step(token: contextvars.Token[StepContext]) -> None:
    _context.reset(token)


class Defer(Exception):
    """Raised by an action that is not ready: run the step again in ``delay_s`` seconds.

    The runtime re-publishes the step with a countdown instead of holding a worker slot
    (``wait.duration`` uses it). It does not count as an attempt.
    """

    def __init__(self, delay_s: float) -> None:
        self.delay_s = max(0.0, delay_s)
        super().__init__(f"deferred for {self.delay_s:.3f}s")


class Connector:
    """One connector action. Subclass it, set ``name`` and ``With``, implement an execute."""

    name: ClassVar[str] = ""
    queue: ClassVar[str] = defaults.QUEUE_IO
    With: ClassVar[type[BaseModel] | None] = None
    description: ClassVar[str] = ""

    def execute_action(self, inputs: Any) -> Any:
        """Run the action with validated inputs; return its output (JSON-serialisable)."""
        raise NotImplementedError

    async def execute_action_async(self, inputs: Any) -> Any:
        """Async variant; override this instead of ``execute_action`` for async actions."""
        raise NotImplementedError

    def is_cpu_intensive(self) -> bool:
        """True for actions that burn CPU: they default to the ``cpu`` queue."""
        return self.queue == defaults.QUEUE_CPU

    @classmethod
    def is_async(cls) -> bool:
        return cls.execute_action_async is not Connector.execute_action_async

    @property
    def execution_mode(self) -> str:
        """``async``, ``cpu`` or ``sync``: how the action is executed."""
        if self.is_async():
            return "async"
        return "cpu" if self.is_cpu_intensive() else "sync"

    def parse_inputs(self, raw: dict[str, Any]) -> Any:
        """Validate a resolved ``with:`` block; returns the model (or the dict without one)."""
        return self.With.model_validate(raw) if self.With is not None else dict(raw)

    def default_queue(self) -> str:
        return defaults.QUEUE_CPU if self.is_cpu_intensive() else self.queue


def _connector_classes(obj: Any) -> Iterator[type[Connector]]:
    if inspect.isclass(obj) and issubclass(obj, Connector) and obj is not Connector and obj.name:
        yield obj
    elif isinstance(obj, ModuleType):
        for value in vars(obj).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Connector)
                and value.name
                and value.__module__ == obj.__name__
            ):
                yield value


@dataclass
class Registry:
    """Connector actions by name, with the load errors of connectors that did not import."""

    actions: dict[str, Connector] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, cls: type[Connector]) -> None:
        if cls.name in self.actions and type(self.actions[cls.name]) is not cls:
            raise ValueError(
                f"connector action {cls.name!r} defined twice: "
                f"{type(self.actions[cls.name]).__module__} and {cls.__module__}"
            )
        self.actions[cls.name] = cls()

    def add_module(self, module: ModuleType | type[Connector]) -> None:
        for cls in _connector_classes(module):
            self.add(cls)

    def get(self, name: str) -> Connector:
        """The action called ``name``; raises ConnectorNotFound with a did-you-mean."""
        try:
            return self.actions[name]
        except KeyError:
            raise ConnectorNotFound(name, self.suggest(name)) from None

    def suggest(self, name: str) -> str | None:
        close = difflib.get_close_matches(name, list(self.actions), n=1, cutoff=0.6)
        return close[0] if close else None

    def __contains__(self, name: object) -> bool:
        return name in self.actions

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.actions))


def _timed_import(registry: Registry, label: str, load: Any) -> None:
    started = time.perf_counter()
    try:
        registry.add_module(load())
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the others down
        log.error("connector %s failed to load: %s: %s", label, type(exc).__name__, exc)
        registry.broken[label] = f"{type(exc).__name__}: {exc}"
    finally:
        registry.load_seconds[label] = time.perf_counter() - started


def discover(extra_modules: Iterable[str] = ()) -> Registry:
    """Find every connector: this package's modules, entry points, then ``extra_modules``."""
    registry = Registry()
    package = importlib.import_module("connectors")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            _timed_import(registry, f"connectors.{info.name}",
                          lambda n=info.name: importlib.import_module(f"connectors.{n}"))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _timed_import(registry, f"entry point {ep.name}", ep.load)
    for name in extra_modules:
        _timed_import(registry, name, lambda n=name: importlib.import_module(n))
    return registry


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _default
    if _default is None:
        _default = discover()
    return _default
