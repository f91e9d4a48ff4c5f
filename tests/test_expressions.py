"""``${{ }}`` templates: rendering, references, malformed expressions, the ``}}`` scanner."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskplatform.errors import ExpressionError
from taskplatform.expressions import (
    ALL,
    compile_expression,
    has_expression,
    iter_expressions,
    parse_template,
    references,
    render,
    truthy,
    whole_expression,
)

CTX: dict[str, Any] = {
    "inputs": {"who": "ada", "n": 3, "ratio": 0.5, "flag": True, "nothing": None,
               "obj": {"b": 2, "a": [1, "x"]}, "items": [{"id": 1}, {"id": 2}], "empty": ""},
    "steps": {"fetch": {"status": "succeeded", "output": {"json": {"id": 7, "tags": ["a", "b"]}}},
              "skipped": {"status": "skipped", "output": None}},
    "run": {"id": "r-1"},
}


# --- render -------------------------------------------------------------------------------------


@pytest.mark.parametrize("template, expected", [
    ("${{ inputs.who }}", "ada"),
    ("${{ inputs.n }}", 3),
    ("${{ inputs.ratio }}", 0.5),
    ("${{ inputs.flag }}", True),
    ("${{ inputs.nothing }}", None),
    ("${{ inputs.missing }}", None),
    ("${{ inputs.obj }}", {"b": 2, "a": [1, "x"]}),
    ("${{ inputs.items[].id }}", [1, 2]),
    ("${{ steps.fetch.output.json.tags }}", ["a", "b"]),
    ("  ${{ inputs.n }}  ", 3),  # outer whitespace aside, still one expression
    ("${{inputs.n}}", 3),
    ("${{ `[1, {\"a\": null}]` }}", [1, {"a": None}]),
    ("${{ length(inputs.items) }}", 2),
])
def test_whole_expression_keeps_json_type(template: str, expected: Any) -> None:
    got = render(template, CTX)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("template, expected", [
    ("hello, ${{ inputs.who }}!", "hello, ada!"),
    ("n=${{ inputs.n }}", "n=3"),
    ("r=${{ inputs.ratio }}", "r=0.5"),
    ("flag=${{ inputs.flag }}", "flag=true"),
    ("none=${{ inputs.nothing }}", "none=null"),
    ("obj=${{ inputs.obj }}", 'obj={"a":[1,"x"],"b":2}'),  # compact JSON, keys sorted
    ("list=${{ inputs.items[].id }}", "list=[1,2]"),
    ("${{ inputs.who }}${{ inputs.n }}", "ada3"),
    ("${{ inputs.who }} and ${{ inputs.who }}", "ada and ada"),
    ("[${{ inputs.empty }}]", "[]"),
    ("id ${{ run.id }}: ${{ steps.fetch.status }}", "id r-1: succeeded"),
    ("no expressions here", "no expressions here"),
    ("a $ {{ not one }}", "a $ {{ not one }}"),
])
def test_interpolation_in_longer_strings(template: str, expected: str) -> None:
    assert render(template, CTX) == expected


def test_render_walks_dicts_and_lists() -> None:
    value = {
        "who": "${{ inputs.who }}",
        "nested": {"list": ["${{ inputs.n }}", "x${{ inputs.n }}", 4, None, True],
                   "deep": [{"id": "${{ steps.fetch.output.json.id }}"}]},
        "plain": 1.5,
        "${{ inputs.who }}": "keys are not rendered",
    }
    assert render(value, CTX) == {
        "who": "ada",
        "nested": {"list": [3, "x3", 4, None, True], "deep": [{"id": 7}]},
        "plain": 1.5,
        "${{ inputs.who }}": "keys are not rendered",
    }


def test_render_leaves_non_strings_alone() -> None:
    for value in (1, 2.5, None, True, [], {}):
        assert render(value, CTX) == value


def test_render_does_not_mutate_its_input() -> None:
    value = {"a": ["${{ inputs.n }}"]}
    render(value, CTX)
    assert value == {"a": ["${{ inputs.n }}"]}


def test_evaluation_error_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match=r"expression 'length\(inputs.n\)' failed"):
        render("${{ length(inputs.n) }}", CTX)


# --- whole_expression / has_expression / iter_expressions ----------------------------------------


def test_whole_expression() -> None:
    whole = whole_expression("${{ steps.fetch.output }}")
    assert whole is not None and whole.source == "steps.fetch.output"
    assert whole_expression(" ${{ a }} ") is not None
    assert whole_expression("x ${{ a }}") is None
    assert whole_expression("${{ a }}${{ b }}") is None
    assert whole_expression("plain") is None


def test_has_expression() -> None:
    assert has_expression("${{ a }}")
    assert has_expression({"k": ["x", {"z": "a ${{ b }}"}]})
    assert not has_expression({"k": ["x", 1, None, {"z": "{{ b }}"}]})
    assert not has_expression(5)


def test_iter_expressions_finds_every_one() -> None:
    value = {"a": "${{ inputs.x }} and ${{ inputs.y }}", "b": ["${{ steps.s.output }}", 3]}
    assert [e.source for e in iter_expressions(value)] == ["inputs.x", "inputs.y", "steps.s.output"]


def test_parse_template_splits_text_and_expressions() -> None:
    parts = parse_template("a ${{ x }} b ${{ y }}")
    assert [p if isinstance(p, str) else p.source for p in parts] == ["a ", "x", " b ", "y"]


# --- references ---------------------------------------------------------------------------------


def refs(source: str) -> set[tuple[str, str]]:
    return references(compile_expression(source))


@pytest.mark.parametrize("source, expected", [
    ("steps.fetch.output", {("steps", "fetch")}),
    ("steps.fetch", {("steps", "fetch")}),
    ("steps.fetch.output.json[0].id", {("steps", "fetch")}),
    ('steps."my-step".output', {("steps", "my-step")}),
    ("inputs.x", {("inputs", "x")}),
    ("run.id", {("run", "id")}),
    ("inputs", {("inputs", ALL)}),
    ("steps", {("steps", ALL)}),
    ("steps.*.output", {("steps", ALL)}),
    ("steps.*", {("steps", ALL)}),
    ("inputs.*", {("inputs", ALL)}),
    ("@", {(ALL, ALL)}),
    # filters: names inside are relative to each element, not the root
    ("steps.a.output[?x > inputs.y]", {("steps", "a")}),
    ("steps.a.output[?@ == inputs.x]", {("steps", "a")}),
    ("steps.a.output[*].x", {("steps", "a")}),
    ("steps.a.output[1:3]", {("steps", "a")}),
    ("steps.a.output.items[].id", {("steps", "a")}),
    # functions and expression references
    ("length(steps.a.output)", {("steps", "a")}),
    ("sort_by(steps.a.output, &inputs.k)", {("steps", "a")}),
    ("max(steps.a.output.xs) > inputs.limit", {("steps", "a"), ("inputs", "limit")}),
    # pipes: the right side reads the left side's result
    ("steps.a.output | length(@)", {("steps", "a")}),
    ("steps.a.output.x | inputs.y", {("steps", "a")}),
    # multiselect
    ("{a: steps.a.output, b: inputs.x}", {("steps", "a"), ("inputs", "x")}),
    ("[steps.a.output, inputs.b]", {("steps", "a"), ("inputs", "b")}),
    ("steps.a.output.{x: inputs.y}", {("steps", "a")}),
    # operators
    ("steps.a.output || inputs.d", {("steps", "a"), ("inputs", "d")}),
    ("inputs.a && steps.b.status", {("inputs", "a"), ("steps", "b")}),
    ("!(steps.x.output)", {("steps", "x")}),
    ("(steps.a).output", {("steps", "a")}),
    ("inputs.x == `1`", {("inputs", "x")}),
    # literals read nothing
    ("`{\"a\": 1}`", set()),
    ("'text'", set()),
    # unknown roots are reported as they are (validation names them)
    ("input.x", {("input", "x")}),
])
def test_references(source: str, expected: set[tuple[str, str]]) -> None:
    assert refs(source) == expected


# --- malformed expressions ------------------------------------------------------------------------


@pytest.mark.parametrize("template, pieces", [
    ("${{ steps.a.[ }}", ["malformed expression 'steps.a.['", "column 10", "ends too soon"]),
    ("${{ a b }}", ["malformed expression 'a b'", "at column 3", "near 'b'", "unexpected token"]),
    ("${{ x | | y }}", ["malformed expression 'x | | y'", "near '|'", "invalid token"]),
    ('${{ a."b" c }}', ["malformed expression 'a.\"b\" c'", "near 'c'"]),
    # an open quote hides the '}}': the error says which quote
    ('${{ a."b }}', ["unclosed '${{'", 'a " in it is never closed']),
    ("${{ 'it's' }}", ["unclosed '${{'", "a ' in it is never closed"]),
    ("${{ `{\"a\": 1} }}", ["unclosed '${{'", "a ` in it is never closed"]),
    ("${{ a[?x ==] }}", ["malformed expression 'a[?x ==]'", "near ']'"]),
    ("${{ }}", ["empty expression '${{ }}'"]),
    ("${{   }}", ["empty expression"]),
    ("hello ${{ inputs.who", ["unclosed '${{' in 'hello ${{ inputs.who' (missing '}}')"]),
    ("${{ inputs.who } ", ["unclosed '${{'"]),
    ("ok ${{ a }} then ${{ b", ["unclosed '${{'"]),
])
def test_malformed_expressions_raise_readable_errors(template: str, pieces: list[str]) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_template(template)
    message = str(info.value)
    assert "\n" not in message, "one line, no caret drawing"
    for piece in pieces:
        assert piece in message
    with pytest.raises(ExpressionError):
        render(template, CTX)


# --- the }} scanner -----------------------------------------------------------------------------


@pytest.mark.parametrize("template, expected", [
    ("${{ `{\"a\": 1}` }}", {"a": 1}),
    ("${{ `{\"a\": {\"b\": 1}}` }}", {"a": {"b": 1}}),  # '}}' inside a literal
    ("${{ `\"}}\"` }}", "}}"),
    ("${{ '}}' }}", "}}"),  # raw string
    ("${{ '{{' }}", "{{"),
    ("${{ 'it\\'s' }}", "it's"),  # escaped quote in a raw string
    ("${{ {a: inputs.n} }}", {"a": 3}),
    ("${{ {a: {b: inputs.n}} }}", {"a": {"b": 3}}),  # '}}' closing nested multiselects
    ("${{ {a: inputs.n}}}", {"a": 3}),
    ("x${{ {a: inputs.n} }}y", 'x{"a":3}y'),
    ("${{ inputs.n }}}", "3}"),
    ("${{ `\"a\\`b\"` }}", "a`b"),  # escaped backtick in a literal
])
def test_scanner_skips_braces_in_literals_and_multiselects(template: str, expected: Any) -> None:
    assert render(template, CTX) == expected


def test_quoted_identifier_with_braces() -> None:
    ctx = {"inputs": {"we}}ird": 1}}
    assert render('${{ inputs."we}}ird" }}', ctx) == 1


# --- truthy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, None, 0, 0.0, "", [], {}])
def test_falsy(value: Any) -> None:
    assert truthy(value) is False


@pytest.mark.parametrize("value", [True, 1, -1, 0.1, "x", "false", [0], {"a": None}])
def test_truthy(value: Any) -> None:
    assert truthy(value) is True


def test_truthy_of_a_rendered_when() -> None:
    assert truthy(render("${{ steps.fetch.status == 'succeeded' }}", CTX))
    assert not truthy(render("${{ steps.skipped.output }}", CTX))


# --- property: JSON data round-trips ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)
PROPERTY = settings(derandomize=True, database=None, max_examples=200, deadline=None)


@PROPERTY
@given(json_values)
def test_input_round_trips_through_a_whole_expression(value: Any) -> None:
    assert render("${{ inputs.v }}", {"inputs": {"v": value}}) == value
    assert render({"k": ["${{ inputs.v }}"]}, {"inputs": {"v": value}}) == {"k": [value]}


@PROPERTY
@given(json_values)
def test_json_literal_round_trips_through_the_scanner(value: Any) -> None:
    # the data written into the template as a JMESPath literal: braces, quotes and '}}' inside
    for ascii_only in (True, False):
        literal = json.dumps(value, ensure_ascii=ascii_only).replace("`", "\\`")
        assert render("${{ `" + literal + "` }}", {}) == value


@PROPERTY
@given(json_values)
def test_interpolated_input_is_text_or_compact_json(value: Any) -> None:
    got = render("<${{ inputs.v }}>", {"inputs": {"v": value}})
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    assert got == f"<{text}>"
