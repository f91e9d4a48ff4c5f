"""Flow validation: every malformed flow under tests/flows/bad/ fails with where and what.

Each bad file starts with one or more ``# expect: <substring>`` lines (every one must be in the
error) and, where a line is meaningful, a ``# line: N`` line: the problem carrying the first
expectation must be reported as ``<file>:N: ...``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskplatform.errors import FlowValidationError
from taskplatform.flow import Flow
from taskplatform.validation import (
    coerce_cli_input,
    load_flow_file,
    parse_yaml,
    validate_flow,
    validate_inputs,
)

ROOT = Path(__file__).resolve().parent.parent
BAD_DIR = ROOT / "tests" / "flows" / "bad"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
EXAMPLES = sorted((ROOT / "flows" / "examples").glob("*.yaml"))
NO_LINE = {"empty.yaml"}  # nothing in the file to point at


def _header(path: Path) -> tuple[list[str], int | None]:
    """The ``# expect:`` substrings and the ``# line:`` number at the top of a bad file."""
    expects: list[str] = []
    line: int | None = None
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.startswith("# expect:"):
            expects.append(text.removeprefix("# expect:").strip())
        elif text.startswith("# line:"):
            line = int(text.removeprefix("# line:").strip())
        else:
            break
    return expects, line


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TASKPLATFORM_FLOWS_DIR")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)


# --- the bad flows --------------------------------------------------------------------------------


def test_there_are_enough_bad_flows() -> None:
    assert len(BAD_FILES) >= 25


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_bad_flow_file_is_rejected_with_where_and_what(path: Path) -> None:
    expects, line = _header(path)
    first = path.read_text(encoding="utf-8").splitlines()
    assert first and first[0].startswith("# expect:"), "the first line must be '# expect: ...'"
    assert expects and all(expects)

    with pytest.raises(FlowValidationError) as info:
        load_flow_file(path)
    err = info.value
    message = str(err)

    for expected in expects:
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert err.problems, "a FlowValidationError carries its problems"
    # every problem line names the file
    for rendered in message.splitlines():
        assert rendered.startswith(str(path)), rendered

    carrier = next(r for r in message.splitlines() if expects[0] in r)
    if path.name in NO_LINE:
        assert line is None
        assert carrier.startswith(f"{path}: ")
    else:
        assert line is not None, "add a '# line: N' header: where the first expectation points"
        assert carrier.startswith(f"{path}:{line}: "), carrier
        assert re.match(re.escape(str(path)) + r":\d+: ", carrier)
        n_lines = len(path.read_text(encoding="utf-8").splitlines())
        assert all(p.line is None or 1 <= p.line <= n_lines for p in err.problems)


def test_problems_have_dotted_paths() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(BAD_DIR / "unknown_need.yaml")
    [problem] = info.value.problems
    assert problem.path == "steps.parse.needs[0]"
    assert problem.line == _header(BAD_DIR / "unknown_need.yaml")[1]
    assert problem.message == "unknown step 'fech' (did you mean 'fetch'?)"


def test_every_problem_is_reported_not_just_the_first() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(BAD_DIR / "unknown_with_key.yaml")
    messages = [p.message for p in info.value.problems]
    assert any("unknown key 'urll'" in m for m in messages)
    assert "missing required key 'url'" in messages


def test_missing_with_key_is_reported_once() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flow_file(BAD_DIR / "missing_with_key.yaml")
    assert [p.message for p in info.value.problems] == ["missing required key 'url'"]


def test_duplicate_keys_compare_yaml_values() -> None:
    # `yes` and `true` are the same key (True) once YAML has read them
    text = "name: d\nsteps:\n  a: {uses: transform.set, with: {values: {yes: 1, true: 2}}}\n"
    with pytest.raises(FlowValidationError) as info:
        parse_yaml(text, "<t>")
    assert str(info.value) == "<t>:3: steps.a.with.values[True]: duplicate key True"


def test_cycle_is_only_reported_when_the_graph_is_otherwise_sound() -> None:
    data = {"name": "c", "steps": {
        "a": {"uses": "transform.set", "needs": ["b"], "with": {"values": {}}},
        "b": {"uses": "transform.set", "needs": ["a", "zz"], "with": {"values": {}}},
    }}
    with pytest.raises(FlowValidationError) as info:
        validate_flow(data, source="<dict>")
    assert "unknown step 'zz'" in str(info.value)
    assert "cycle" not in str(info.value)


def test_missing_file_is_not_a_validation_error(tmp_path: Path) -> None:
    from taskplatform.errors import FlowNotFound

    with pytest.raises(FlowNotFound):
        load_flow_file(tmp_path / "nope.yaml")


def test_validate_flow_rejects_non_mapping_without_a_line() -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_flow(["a"], source="<x>")
    assert str(info.value) == "<x>: a flow must be a mapping with name and steps, got a list"


# --- the CLI ------------------------------------------------------------------------------------

CLI_BAD = ["unknown_need.yaml", "cycle3.yaml", "yaml_syntax.yaml", "recursive_alias.yaml",
           "expr_not_upstream.yaml"]


def test_cli_validate_bad_flows_exits_3_with_messages_and_no_traceback() -> None:
    rel = [str(Path("tests/flows/bad") / name) for name in CLI_BAD]
    done = _manage("flows", "validate", *rel, "flows/examples/hello.yaml")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for path in rel:
        expects, line = _header(ROOT / path)
        for expected in expects:
            assert expected in done.stderr
        assert f"{path}:{line}: " in done.stderr
    assert "ok  flows/examples/hello.yaml" in done.stdout
    assert "tests/flows/bad" not in done.stdout


def test_cli_validate_one_bad_flow() -> None:
    done = _manage("flows", "validate", "tests/flows/bad/unknown_step_key.yaml")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "tests/flows/bad/unknown_step_key.yaml:7: steps.a.retries: unknown key 'retries' "
        "(did you mean 'retry'?)"
    )


def test_cli_validate_examples_exits_0() -> None:
    rel = [str(p.relative_to(ROOT)) for p in EXAMPLES]
    done = _manage("flows", "validate", *rel)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for path in rel:
        assert f"ok  {path}" in done.stdout


# --- the good flows -------------------------------------------------------------------------------


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_flow_validates(path: Path) -> None:
    flow = load_flow_file(path)
    assert isinstance(flow, Flow)
    assert flow.steps
    # what is frozen at submit validates again to the same flow
    assert validate_flow(flow.to_spec()).to_spec() == flow.to_spec()


# --- inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed_flow() -> Flow:
    return validate_flow({
        "name": "typed",
        "inputs": {
            "who": {"type": "string"},
            "count": {"type": "integer", "default": 3},
            "ratio": {"type": "number", "default": 0.5},
            "loud": {"type": "boolean", "default": False},
            "tags": {"type": "array", "default": []},
            "extra": {"type": "object", "default": {}},
            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
            "anything": {"type": "any", "default": None},
        },
        "steps": {"a": {"uses": "transform.set", "with": {"values": {"who": "${{ inputs.who }}"}}}},
    })


def test_validate_inputs_fills_defaults(typed_flow: Flow) -> None:
    assert validate_inputs(typed_flow, {"who": "ada"}) == {
        "who": "ada", "count": 3, "ratio": 0.5, "loud": False, "tags": [], "extra": {},
        "color": "red", "anything": None,
    }


def test_validate_inputs_keeps_given_values(typed_flow: Flow) -> None:
    got = validate_inputs(typed_flow, {"who": "ada", "count": 7, "ratio": 2, "anything": [1]})
    assert got["count"] == 7 and got["ratio"] == 2 and got["anything"] == [1]


def test_validate_inputs_missing_required(typed_flow: Flow) -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_inputs(typed_flow, {})
    assert str(info.value) == "flow 'typed': inputs.who: missing required input (string)"
    with pytest.raises(FlowValidationError):
        validate_inputs(typed_flow, None)


def test_validate_inputs_wrong_type(typed_flow: Flow) -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_inputs(typed_flow, {"who": "ada", "count": "7", "tags": "x"})
    message = str(info.value)
    assert "inputs.count: expected integer, got str '7'" in message
    assert "inputs.tags: expected array, got str 'x'" in message
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("name, value", [("count", True), ("ratio", False)])
def test_validate_inputs_bool_is_not_a_number(typed_flow: Flow, name: str, value: bool) -> None:
    with pytest.raises(FlowValidationError, match=rf"inputs\.{name}: expected \w+, got bool {value}"):
        validate_inputs(typed_flow, {"who": "ada", name: value})


def test_validate_inputs_enum(typed_flow: Flow) -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_inputs(typed_flow, {"who": "ada", "color": "green"})
    assert "inputs.color: must be one of ['red', 'blue'], got 'green'" in str(info.value)


def test_validate_inputs_unknown_with_did_you_mean(typed_flow: Flow) -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_inputs(typed_flow, {"who": "ada", "cuont": 1})
    [problem] = info.value.problems
    assert problem.path == "inputs.cuont"
    assert "unknown input (did you mean 'count'?)" in problem.message
    assert "declared: anything, color, count, extra, loud, ratio, tags, who" in problem.message


def test_validate_inputs_of_a_flow_without_inputs() -> None:
    flow = load_flow_file(ROOT / "flows" / "examples" / "diamond.yaml")
    assert validate_inputs(flow, {}) == {"x": 6}
    bare = validate_flow({"name": "bare", "steps": {"a": {"uses": "transform.set",
                                                           "with": {"values": {}}}}})
    with pytest.raises(FlowValidationError, match="declared: none"):
        validate_inputs(bare, {"x": 1})


@pytest.mark.parametrize("name, text, expected", [
    ("who", "42", "42"),
    ("who", "", ""),
    ("count", "42", 42),
    ("count", "-3", -3),
    ("ratio", "1.5", 1.5),
    ("ratio", "2", 2),
    ("ratio", "1e3", 1000.0),
    ("loud", "true", True),
    ("loud", "Yes", True),
    ("loud", "1", True),
    ("loud", "off", False),
    ("loud", "FALSE", False),
    ("tags", '["a", 1]', ["a", 1]),
    ("extra", '{"k": {"n": null}}', {"k": {"n": None}}),
    ("anything", '{"a": 1}', {"a": 1}),
    ("anything", "7", 7),
    ("anything", "not json", "not json"),
    ("undeclared", "[1]", [1]),
])
def test_coerce_cli_input(typed_flow: Flow, name: str, text: str, expected: object) -> None:
    got = coerce_cli_input(typed_flow, name, text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("name, text", [
    ("count", "1.5"), ("count", "many"), ("ratio", "fast"), ("loud", "maybe"), ("tags", "[1,"),
    ("extra", "{bad}"),
])
def test_coerce_cli_input_rejects(typed_flow: Flow, name: str, text: str) -> None:
    with pytest.raises(FlowValidationError) as info:
        coerce_cli_input(typed_flow, name, text)
    [problem] = info.value.problems
    assert problem.path == f"inputs.{name}"
    assert repr(text) in problem.message
    assert str(info.value).startswith("--input: ")


def test_coerced_cli_input_then_validates(typed_flow: Flow) -> None:
    given = {k: coerce_cli_input(typed_flow, k, v) for k, v in
             {"who": "ada", "count": "5", "loud": "yes", "tags": "[1]"}.items()}
    assert validate_inputs(typed_flow, given)["count"] == 5
    wrong_shape = {"who": "ada", "extra": coerce_cli_input(typed_flow, "extra", "[1]")}
    with pytest.raises(FlowValidationError, match="inputs.extra: expected object, got list"):
        validate_inputs(typed_flow, wrong_shape)
