"""The compiler is pure: flow in, plan and canvases out, no broker needed."""

from __future__ import annotations

from celery import Signature, group

from connectors.base import default_registry
from taskplatform.compiler import compile_flow
from taskplatform.validation import validate_flow


def _flow(steps, **extra):
    return validate_flow({"name": "c", "steps": steps, **extra})


S = {"uses": "transform.set", "with": {"values": {}}}


def test_canvas_shapes_are_never_degenerate():
    plan = compile_flow(_flow({"a": S}), default_registry())
    sig = plan.canvas("r1")
    assert isinstance(sig, Signature) and not isinstance(sig, group)
    assert sig.args == ("r1", "a") and sig.kwargs == {}
    plan = compile_flow(_flow({"a": S, "b": S, "c": {**S, "needs": ["a", "b"]}}), default_registry())
    g = plan.canvas("r1")
    assert isinstance(g, group) and len(g.tasks) == 2
    assert plan.canvas("r1", []) is None


def test_messages_carry_ids_and_route_by_queue():
    flow = _flow({
        "h": {"uses": "http.request", "with": {"url": "http://x"}},
        "t": {"uses": "transform.set", "needs": ["h"], "with": {"values": {"a": "${{ steps.h.output }}"}}},
        "p": {"uses": "python.call", "needs": ["h"], "queue": "plan", "with": {"function": "a:b"},
              "timeout_s": 5},
    })
    plan = compile_flow(flow, default_registry())
    assert [plan.steps[s].queue for s in ("h", "t", "p")] == ["io", "cpu", "plan"]
    sig = plan.steps["p"].signature("run")
    assert sig.task == "connectors.python.call" and sig.args == ("run", "p")
    assert sig.options["soft_time_limit"] == 5 and sig.options["time_limit"] == 20
    assert plan.steps["h"].dependents == ("t", "p") or set(plan.steps["h"].dependents) == {"t", "p"}
    assert plan.initial_remaining() == {"t": 1, "p": 1}


def test_retry_policy_merges_step_over_flow_over_engine():
    flow = _flow({"a": {**S, "retry": {"max_attempts": 7}}, "b": S},
                 defaults={"retry": {"backoff_s": 3}, "timeout_s": 9})
    plan = compile_flow(flow, default_registry())
    assert plan.steps["a"].retry.max_attempts == 7 and plan.steps["a"].retry.backoff_s == 3
    assert plan.steps["b"].retry.max_attempts == 3 and plan.steps["b"].soft_time_limit_s == 9


def test_topological_order_and_descendants():
    flow = _flow({"d": {**S, "needs": ["b", "c"]}, "b": {**S, "needs": ["a"]},
                  "c": {**S, "needs": ["a"]}, "a": S})
    plan = compile_flow(flow, default_registry())
    pos = {s: i for i, s in enumerate(plan.order)}
    assert pos["a"] < pos["b"] < pos["d"] and pos["c"] < pos["d"]
    assert plan.roots == ("a",) and plan.descendants("a") == {"b", "c", "d"}
