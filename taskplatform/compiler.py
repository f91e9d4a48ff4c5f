"""The compiler: a validated flow in, an execution plan and Celery canvases out. No I/O.

Why no chains or chords: Celery's canvas has long-standing traps (CELERY-TRAPS.md): chords
hang when a member fails or its worker dies, chord counters expire, nested chords misbehave,
and every chain message carries all remaining steps (O(n^2) bytes over a long chain). So the
only canvas we emit is the safest one: a ``group`` of independent step signatures (a single
signature when there is one, nothing when there is none), each carrying just ``(run_id,
step_id)``. Fan-in is ours: when a step settles, an atomic Redis script counts down the needs
of its dependents, and the task that settles a dependent's last need launches it. A step
therefore starts the moment its last need settles, on any DAG, series-parallel or not: no
stage barriers, no extra waiting, and messages of constant size whatever the flow's size.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass
from typing import Any

from celery import Signature, group

from connectors.base import Registry
from taskplatform import defaults
from taskplatform.flow import Flow, RetryPolicy


def task_name(action: str) -> str:
    """The Celery task name of a connector action: ``http.request`` -> ``connectors.http.request``."""
    return f"connectors.{action}"


@dataclass(frozen=True)
class StepPlan:
    """Everything the runtime needs to dispatch and run one step."""

    id: str
    action: str
    task: str
    queue: str
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    soft_time_limit_s: float
    time_limit_s: float
    retry: RetryPolicy
    has_when: bool

    def signature(self, run_id: str) -> Signature:
        """The step's message: ids only, routed to its queue, time-limited."""
        return Signature(
            self.task,
            args=(run_id, self.id),
            options={
                "queue": self.queue,
                "soft_time_limit": self.soft_time_limit_s,
                "time_limit": self.time_limit_s,
                "ignore_result": True,
            },
        )


@dataclass(frozen=True)
class Plan:
    """A compiled flow: steps in topological order with their needs and dependents."""

    flow: str
    steps: dict[str, StepPlan]
    order: tuple[str, ...]
    roots: tuple[str, ...]

    def canvas(self, run_id: str, step_ids: tuple[str, ...] | list[str] | None = None) -> Any:
        """The canvas that launches ``step_ids`` (the roots by default) of run ``run_id``.

        One signature for one step, a group for several, None for none: never a group of one
        or an empty group (CELERY-TRAPS: degenerate canvases).
        """
        ids = self.roots if step_ids is None else tuple(step_ids)
        sigs = [self.steps[s].signature(run_id) for s in ids]
        if not sigs:
            return None
        return sigs[0] if len(sigs) == 1 else group(sigs)

    def initial_remaining(self) -> dict[str, int]:
        """Needs still to settle per step, at the start of a run."""
        return {s.id: len(s.needs) for s in self.steps.values() if s.needs}

    def descendants(self, step_id: str) -> set[str]:
        """Every step downstream of ``step_id``."""
        out: set[str] = set()
        stack = list(self.steps[step_id].dependents)
        while stack:
            s = stack.pop()
            if s not in out:
                out.add(s)
                stack.extend(self.steps[s].dependents)
        return out

    def mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
        lines = ["flowchart TD"]
        for sid in self.order:
            step = self.steps[sid]
            shape = "{{%s}}" if step.has_when else "[%s]"
            label = f'"{sid}<br/><small>{step.action} · {step.queue}</small>"'
            lines.append(f"    {_mermaid_id(sid)}{shape % label}")
        for sid in self.order:
            for need in self.steps[sid].needs:
                lines.append(f"    {_mermaid_id(need)} --> {_mermaid_id(sid)}")
        return "\n".join(lines)

    def describe(self) -> str:
        """A readable account of how the plan runs (``flows show --canvas``)."""
        out = [f"flow {self.flow}: {len(self.steps)} steps, {len(self.roots)} root(s)",
               f"launch: {self.canvas('<run_id>')!r}"]
        for sid in self.order:
            s = self.steps[sid]
            after = f" after {', '.join(s.needs)}" if s.needs else " at start"
            out.append(f"  {sid}: {s.task} on {s.queue}{after}"
                       f" (soft {s.soft_time_limit_s:g}s, hard {s.time_limit_s:g}s,"
                       f" {s.retry.max_attempts} attempt(s))")
        out.append("each step, when it settles, launches the dependents whose needs have all settled")
        return "\n".join(out)


def _mermaid_id(step_id: str) -> str:
    return "s_" + step_id.replace("-", "_")


def compile_flow(flow: Flow, registry: Registry) -> Plan:
    """Compile a validated flow into a plan. Pure: reads the registry, touches nothing else."""
    needs = {sid: tuple(step.needs) for sid, step in flow.steps.items()}
    order = tuple(graphlib.TopologicalSorter(needs).static_order())
    dependents: dict[str, list[str]] = {sid: [] for sid in flow.steps}
    for sid in order:
        for need in needs[sid]:
            dependents[need].append(sid)
    steps: dict[str, StepPlan] = {}
    for sid in order:
        step = flow.steps[sid]
        connector = registry.get(step.uses)
        queue = step.queue or flow.defaults.queue or connector.default_queue()
        soft = flow.timeout_for(sid)
        steps[sid] = StepPlan(
            id=sid,
            action=step.uses,
            task=task_name(step.uses),
            queue=queue,
            needs=needs[sid],
            dependents=tuple(dependents[sid]),
            soft_time_limit_s=soft,
            time_limit_s=soft + defaults.HARD_LIMIT_GRACE_S,
            retry=flow.retry_for(sid),
            has_when=step.when is not None,
        )
    roots = tuple(sid for sid in order if not needs[sid])
    return Plan(flow=flow.name, steps=steps, order=order, roots=roots)
