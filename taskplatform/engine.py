"""The per-process engine: Redis client, run store, connector registry and a cache of frozen specs.

Created on first use in each process (so never at import, and after a prefork fork).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from connectors.base import Registry, default_registry
from taskplatform import defaults, expressions
from taskplatform.compiler import Plan, compile_flow
from taskplatform.config import client_url_for
from taskplatform.dlq import DeadLetters
from taskplatform.errors import ConfigError
from taskplatform.flow import Flow
from taskplatform.settings import Settings
from taskplatform.state import RunStore


@dataclass(frozen=True)
class RunSpec:
    """A run's frozen flow, its plan and inputs, and what each step's expressions read."""

    run_id: str
    flow: Flow
    plan: Plan
    inputs: dict[str, Any]
    run: dict[str, Any]
    reads: dict[str, frozenset[str] | None]  # step_id -> steps it reads (None: all)

    @classmethod
    def from_json(cls, run_id: str, data: dict[str, Any], registry: Registry) -> RunSpec:
        flow = Flow.model_validate(data["flow"])
        plan = compile_flow(flow, registry)
        reads: dict[str, frozenset[str] | None] = {}
        for sid, step in flow.steps.items():
            names: set[str] = set()
            everything = False
            for value in (step.with_, step.when):
                for expr in expressions.iter_expressions(value):
                    for root, name in expressions.references(expr):
                        if root in ("steps", expressions.ALL):
                            if name == expressions.ALL:
                                everything = True
                            else:
                                names.add(name)
            reads[sid] = None if everything else frozenset(names)
        return cls(run_id, flow, plan, data.get("inputs", {}), data.get("run", {}), reads)


class Engine:
    """What a process needs to run steps and submit runs: settings, Redis, registry, caches."""

    def __init__(self, app: Celery, settings: Settings, registry: Registry | None = None) -> None:
        if not settings.redis_url:
            raise ConfigError("no Redis configured: set REDIS_URL")
        self.app = app
        self.settings = settings
        self.registry = registry or default_registry()
        self.redis_url = client_url_for(settings.redis_url)  # as redis-py reads it
        self.redis = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5,
                                          health_check_interval=30)
        self.store = RunStore(self.redis, prefix=settings.key_prefix, ttl_s=settings.run_ttl_s)
        self.dlq = DeadLetters(self.redis, settings.key_prefix)
        self._specs: OrderedDict[str, RunSpec] = OrderedDict()
        self._lock = threading.Lock()

    def run_spec(self, run_id: str) -> RunSpec | None:
        """The frozen spec of a run (cached: it never changes); None if Redis has none."""
        with self._lock:
            spec = self._specs.get(run_id)
            if spec is not None:
                self._specs.move_to_end(run_id)
                return spec
        data = self.store.load_spec(run_id)
        if data is None:
            return None
        spec = RunSpec.from_json(run_id, data, self.registry)
        with self._lock:
            self._specs[run_id] = spec
            while len(self._specs) > defaults.SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return spec

    def forget_spec(self, run_id: str) -> None:
        """Drop a cached spec (its run's state is gone from Redis)."""
        with self._lock:
            self._specs.pop(run_id, None)

    def context_for(self, spec: RunSpec, step_id: str | None) -> dict[str, Any]:
        """The expression context of a step (only the steps it reads), or of the whole run."""
        reads = spec.reads.get(step_id) if step_id is not None else None
        ids = list(spec.plan.order) if reads is None else sorted(reads)
        statuses, outputs, _ = self.store.read_steps(spec.run_id, ids)
        return self.context_from(spec, statuses, outputs)

    @staticmethod
    def context_from(spec: RunSpec, statuses: dict[str, str], outputs: dict[str, Any]) -> dict[str, Any]:
        """The expression context of the steps in ``statuses``."""
        steps = {sid: {"output": outputs.get(sid), "status": st} for sid, st in statuses.items()}
        return {"inputs": spec.inputs, "steps": steps, "run": spec.run}


_engines: weakref.WeakKeyDictionary[Celery, Engine] = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine_for(app: Celery) -> Engine:
    """The engine of ``app`` in this process, built from the app's configuration on first use."""
    engine = _engines.get(app)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(app)
            if engine is None:
                raw = app.conf.get("taskplatform_settings")
                if raw is None:
                    raise ConfigError("the Celery app has no taskplatform_settings: configure it "
                                      "with taskplatform.config.celery_config()")
                engine = Engine(app, Settings.model_validate(raw))
                _engines[app] = engine
    return engine


def reset_engine(app: Celery) -> None:
    """Forget the engine of ``app`` (after reconfiguring it)."""
    with _engines_lock:
        _engines.pop(app, None)
