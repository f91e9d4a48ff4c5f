"""``transform.jmespath`` and ``transform.set``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.transform import Jmespath, Set
from taskplatform.errors import PermanentError

DATA = {
    "orders": [
        {"id": 1, "total": 30, "status": "paid", "customer": {"name": "ada"}},
        {"id": 2, "total": 5, "status": "open", "customer": {"name": "bob"}},
        {"id": 3, "total": 12, "status": "paid", "customer": {"name": "cy"}},
    ],
    "meta": {"count": 3},
}


@pytest.fixture
def jp() -> Jmespath:
    return Jmespath()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("meta.count", 3),
        ("orders[0].customer.name", "ada"),
        ("orders[?status=='paid'].id", [1, 3]),
        ("sum(orders[].total)", 47),
        ("length(orders)", 3),
        ("sort_by(orders, &total)[].id", [2, 3, 1]),
        ("orders[].{id: id, who: customer.name}",
         [{"id": 1, "who": "ada"}, {"id": 2, "who": "bob"}, {"id": 3, "who": "cy"}]),
        ("max_by(orders, &total).customer.name", "ada"),
        ("nothing.here", None),
        ("@", DATA),
    ],
)
def test_jmespath_output(jp, call, expression, expected):
    assert call(jp, data=DATA, expression=expression) == expected


def test_jmespath_on_a_list_and_a_scalar(jp, call):
    assert call(jp, data=[1, 2, 3], expression="[-1]") == 3
    assert call(jp, data="text", expression="length(@)") == 4


def test_jmespath_without_data(jp, call):
    assert call(jp, expression="a") is None


@pytest.mark.parametrize(
    "expression",
    ["orders[?", "orders[", "foo.", "a ||", "", "[?a==]", "length(@, @) extra", "a[?b=='x']]", "&"],
)
def test_malformed_expression_rejected_by_model(jp, expression):
    with pytest.raises(ValidationError, match="malformed JMESPath|JMESPath"):
        jp.parse_inputs({"data": {}, "expression": expression})


def test_expression_with_placeholder_is_checked_later(jp):
    inputs = jp.parse_inputs({"data": {}, "expression": "${{ inputs.query }}"})
    assert inputs.expression == "${{ inputs.query }}"


@pytest.mark.parametrize(
    ("data", "expression", "reason"),
    [
        ({"a": "text"}, "abs(a)", "invalid type"),
        ({"a": [1, "x"]}, "sort(a)", "invalid type"),
        ({"a": 1}, "length(a, a)", "Expected 1 argument"),
        ({"a": 1}, "no_such_function(a)", "Unknown function"),
        ({"a": [{"n": 1}, {"n": "x"}]}, "sort_by(a, &n)", ""),
    ],
)
def test_runtime_error_is_permanent(jp, call, data, expression, reason):
    with pytest.raises(PermanentError, match="JMESPath") as info:
        call(jp, data=data, expression=expression)
    assert expression in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"data": {}}, id="no-expression"),
        pytest.param({"data": {}, "expression": 5}, id="expression-not-string"),
        pytest.param({"data": {}, "expression": "a", "query": "b"}, id="unknown-key"),
    ],
)
def test_jmespath_invalid_inputs(jp, raw):
    with pytest.raises(ValidationError):
        jp.parse_inputs(raw)


def test_set_returns_values(call):
    values = {"a": 1, "b": [1, 2], "c": {"nested": None}, "d": "text", "e": True}
    assert call(Set(), values=values) == values


def test_set_empty(call):
    assert call(Set(), values={}) == {}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({}, id="no-values"),
        pytest.param({"values": [1, 2]}, id="values-not-mapping"),
        pytest.param({"values": {}, "other": 1}, id="unknown-key"),
    ],
)
def test_set_invalid_inputs(raw):
    with pytest.raises(ValidationError):
        Set().parse_inputs(raw)


def test_metadata(jp):
    assert jp.name == "transform.jmespath"
    assert Set.name == "transform.set"
    assert jp.execution_mode == "cpu" and Set().execution_mode == "cpu"
    assert jp.default_queue() == "cpu"
