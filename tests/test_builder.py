"""FlowBuilder: a flow built in Python is the same Flow its YAML file gives, validated alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.examples.builder_example import build
from taskplatform.builder import FlowBuilder, StepRef, expr
from taskplatform.errors import FlowValidationError
from taskplatform.flow import Flow
from taskplatform.validation import load_flow_file

ROOT = Path(__file__).resolve().parent.parent
DIAMOND = ROOT / "flows" / "examples" / "diamond.yaml"


def test_builder_gives_the_yaml_flow() -> None:
    from_yaml = load_flow_file(DIAMOND)
    built = build("diamond", from_yaml.description)
    assert isinstance(built, Flow)
    assert built.to_spec() == from_yaml.to_spec()
    assert built == from_yaml


def test_builder_example_is_the_diamond_under_another_name() -> None:
    from_yaml = load_flow_file(DIAMOND).to_spec()
    built = build().to_spec()
    assert built["name"] == "diamond-py"
    assert built["description"] == "diamond, built in Python"
    assert {**built, "name": "diamond", "description": from_yaml["description"]} == from_yaml


def test_builder_flow_has_the_same_graph_and_defaults() -> None:
    flow = build()
    assert flow.steps["join"].needs == ["double", "square"]
    assert flow.steps["start"].needs == []
    assert flow.retry_for("join") == load_flow_file(DIAMOND).retry_for("join")


def test_step_refs_and_expr() -> None:
    ref = StepRef("fetch")
    assert ref.output() == "${{ steps.fetch.output }}"
    assert ref.output("json.id") == "${{ steps.fetch.output.json.id }}"
    assert ref.status() == "${{ steps.fetch.status }}"
    assert FlowBuilder.input("x") == expr("inputs.x") == "${{ inputs.x }}"


def test_builder_options_land_on_the_step() -> None:
    b = FlowBuilder("opts", defaults={"timeout_s": 20})
    first = b.step("first", "transform.set", values={"ok": True})
    b.step("second", "shell.run", needs=["first"], when=first.output("ok"), queue="cpu",
           retry={"max_attempts": 2}, timeout_s=5, argv=["true"])
    flow = b.build()
    step = flow.steps["second"]
    assert step.needs == ["first"]
    assert step.when == "${{ steps.first.output.ok }}"
    assert step.queue == "cpu" and step.timeout_s == 5 and step.retry is not None
    assert flow.retry_for("second").max_attempts == 2
    assert flow.timeout_for("first") == 20


def test_invalid_builder_flow_raises_every_problem() -> None:
    b = FlowBuilder("broken")
    fetch = b.step("fetch", "http.request", urll="http://example.com")
    b.step("parse", "transform.jmespath", needs=["fech"], data=fetch.output("json"), expression="@")
    b.step("typo", "http.requst", url="http://example.com")
    with pytest.raises(FlowValidationError) as info:
        b.build()
    message = str(info.value)
    assert "<builder broken>: steps.fetch.with.urll: unknown key 'urll' for this action " \
           "(did you mean 'url'?)" in message
    assert "<builder broken>: steps.fetch.with: missing required key 'url'" in message
    assert "<builder broken>: steps.parse.needs[0]: unknown step 'fech' (did you mean 'fetch'?)" in message
    assert "steps.typo.uses: unknown connector action 'http.requst' (did you mean 'http.request'?)" in message
    assert all(p.line is None for p in info.value.problems)  # no file, no lines


def test_builder_reference_to_a_step_not_upstream() -> None:
    b = FlowBuilder("upstream")
    a = b.step("a", "transform.set", values={"x": 1})
    b.step("b", "transform.set", values={"y": a.output("x")})  # forgot needs=[a]
    with pytest.raises(FlowValidationError, match=r"steps\.b\.with\.values\.y: .* add 'a' to needs"):
        b.build()


def test_builder_cycle() -> None:
    b = FlowBuilder("cyclic")
    b.step("a", "transform.set", needs=["b"], values={})
    b.step("b", "transform.set", needs=["a"], values={})
    with pytest.raises(FlowValidationError, match="cycle in needs: a -> b -> a"):
        b.build()


def test_builder_bad_name() -> None:
    b = FlowBuilder("no spaces allowed")
    b.step("a", "transform.set", values={})
    with pytest.raises(FlowValidationError, match=r"name: bad value 'no spaces allowed'"):
        b.build()
