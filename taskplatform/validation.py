"""Load and validate flows: every problem found before anything runs, each with where and what.

``flows/etl.yaml:14: steps.parse.needs[0]: unknown step 'fech' (did you mean 'fetch'?)``
"""

from __future__ import annotations

import difflib
import graphlib
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from connectors.base import Registry, default_registry
from taskplatform import expressions
from taskplatform.errors import ExpressionError, FlowNotFound, FlowValidationError, Problem
from taskplatform.expressions import SECRETS_ROOT
from taskplatform.flow import FLOW_NAME_PATTERN, STEP_ID_PATTERN, Flow, InputSpec

Loc = tuple[str | int, ...]
YAML_SUFFIXES = (".yaml", ".yml")


def render_loc(loc: Iterable[str | int]) -> str:
    """``("steps", "a", "needs", 0)`` -> ``steps.a.needs[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Problems:
    """Collects problems, giving each the line its path starts at in the YAML source."""

    def __init__(self, lines: dict[Loc, int] | None = None) -> None:
        self.items: list[Problem] = []
        self.lines = lines or {}

    def add(self, loc: Loc, message: str, *, shown: Loc | None = None) -> None:
        """Add a problem at ``loc`` (``shown``, when given, is the path printed instead)."""
        line = None
        for n in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                break
        self.items.append(Problem(render_loc(loc if shown is None else shown), message, line))


# --- YAML -----------------------------------------------------------------------------------


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _NodeWalker:
    """Walks a composed YAML tree: the line of every path, duplicate keys, recursive aliases.

    Keys are the values YAML gives them (``on:`` is True, ``1:`` is 1), as in the loaded data.
    A node reached again through an alias is not walked again: its paths keep the alias's line.
    """

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._keys = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._done: set[int] = set()

    def _key(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag != _MERGE_TAG:
            try:
                return self._keys.construct_object(node)
            except yaml.YAMLError:
                return node.value
        return node.value

    def walk(self, node: yaml.Node, loc: Loc = ()) -> None:
        line = self.lines.setdefault(loc, node.start_mark.line + 1)  # an alias: where it is used
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return
        if id(node) in self._active:
            self.problems.append(Problem(render_loc(loc), "recursive YAML alias: an anchor refers to "
                                         "a mapping or list that contains it", line))
            return
        if id(node) in self._done:
            return
        self._active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = self._key(key_node)
                child = (*loc, key)
                key_line = key_node.start_mark.line + 1
                if key in seen:
                    self.problems.append(Problem(render_loc(child), f"duplicate key {key!r}", key_line))
                seen.add(key)
                self.lines[child] = key_line
                self.walk(value_node, child)
        else:
            for i, item in enumerate(node.value):
                self.walk(item, (*loc, i))
        self._active.discard(id(node))
        self._done.add(id(node))


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """YAML text to data plus a map from path to line; FlowValidationError on bad YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        col = f", column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or str(exc)
        raise FlowValidationError(
            [Problem("", f"YAML syntax error{col}: {what}", line)], source=source
        ) from None
    except yaml.YAMLError as exc:
        raise FlowValidationError([Problem("", f"YAML error: {exc}")], source=source) from None
    walker = _NodeWalker()
    if node is not None:
        walker.walk(node)
    if walker.problems:
        raise FlowValidationError(walker.problems, source=source)
    return data, walker.lines


# --- shape (pydantic) -------------------------------------------------------------------------


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for key suggestions)."""
    current: Any = Flow
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {(f.alias or n): f for n, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        else:
            origin, args = typing.get_origin(current), typing.get_args(current)
            if origin is dict and len(args) == 2:
                current = args[1]
            elif origin in (list, typing.Union, types.UnionType):
                models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                if not models:
                    return None
                current = models[0]
                if origin is list:
                    continue
                # a Union's model validates this same mapping
                fields = {(f.alias or n): f for n, f in current.model_fields.items()}
                if part not in fields:
                    return None
                current = fields[part].annotation
            else:
                return None
        while typing.get_origin(current) in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                break
            current = models[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _pattern_hints() -> dict[str, str]:
    hints = {
        FLOW_NAME_PATTERN: "a flow name is letters, digits, '.', '_' and '-', starting with a letter "
                           "or digit, at most 128 characters",
    }
    try:
        from connectors.python import FUNCTION_PATTERN  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a broken connector is reported by the registry
        pass
    else:
        hints[FUNCTION_PATTERN] = "a function is named by its import path, 'pkg.module:name'"
    return hints


def _one_line(message: str) -> str:
    """A (JMESPath) error message without its multi-line caret drawing."""
    first = message.strip().splitlines()[0] if message.strip() else message
    return first.removesuffix(":").removesuffix(", for expression").rstrip()


def _pydantic_problems(exc: ValidationError, problems: _Problems, prefix: Loc = (),
                       model: type[BaseModel] | None = None) -> None:
    for err in exc.errors(include_url=False):
        loc: Loc = (*prefix, *err["loc"])
        kind = err["type"]
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type (YAML: `on:`, `1:`)
            key = err.get("input")  # the loc holds True as 1
            problems.add(loc[:-1], f"key {key!r} is not a string: quote it (YAML reads unquoted "
                         "yes/no/on/off/true/false/null as booleans or null, and digits as numbers)",
                         shown=loc[:-2])
        elif kind == "string_pattern_mismatch":
            got = err.get("input")
            hint = _pattern_hints().get(str(err.get("ctx", {}).get("pattern")))
            what = hint or f"it must match the pattern {err.get('ctx', {}).get('pattern')!r}"
            problems.add(loc, f"bad value {got!r}: {what}")
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            owner = model if model is not None and len(err["loc"]) == 1 else _model_at(loc[:-1])
            names = [(f.alias or n) for n, f in owner.model_fields.items()] if owner else []
            problems.add(loc, f"unknown key {key!r}{_did_you_mean(key, names)}")
        elif kind == "missing":
            problems.add(loc[:-1], f"missing required key {str(loc[-1])!r}")
        elif kind == "value_error":
            problems.add(loc, _one_line(str(err["ctx"].get("error", err["msg"])) if "ctx" in err
                                        else err["msg"]))
        else:
            got = err.get("input")
            shown = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
            if kind == "literal_error" and isinstance(got, str):  # `type: int` -> 'integer'
                options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                shown += _did_you_mean(got, options)
            problems.add(loc, f"{err['msg'][0].lower()}{err['msg'][1:]}{shown}")


# --- meaning ----------------------------------------------------------------------------------


def _ancestors(flow: Flow) -> dict[str, set[str]]:
    memo: dict[str, set[str]] = {}
    order = list(graphlib.TopologicalSorter({s: flow.steps[s].needs for s in flow.steps}).static_order())
    for step_id in order:
        acc: set[str] = set()
        for need in flow.steps[step_id].needs:
            acc.add(need)
            acc |= memo.get(need, set())
        memo[step_id] = acc
    return memo


def _check_expressions(value: Any, loc: Loc, flow: Flow, allowed_steps: set[str] | None,
                       problems: _Problems, step_id: str | None = None, *,
                       allow_secrets: bool = False) -> None:
    """Parse every expression under ``value`` and check what it refers to."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_expressions(v, (*loc, k), flow, allowed_steps, problems, step_id,
                               allow_secrets=allow_secrets)
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_expressions(v, (*loc, i), flow, allowed_steps, problems, step_id,
                               allow_secrets=allow_secrets)
        return
    if not isinstance(value, str) or expressions.OPEN not in value:
        return
    try:
        found = list(expressions.iter_expressions(value))
    except ExpressionError as exc:
        problems.add(loc, str(exc))
        return
    for expr in found:
        for root, name in sorted(expressions.references(expr)):
            if root == expressions.ALL:
                if allowed_steps is not None:
                    problems.add(loc, f"expression {expr.source!r} reads the whole context ('@'); "
                                      "name what it needs")
                continue
            if root == SECRETS_ROOT:
                if not allow_secrets:
                    problems.add(loc, f"expression {expr.source!r}: secrets can only be used in a "
                                 "step's with:, where the worker resolves them")
                elif name == expressions.ALL:
                    problems.add(loc, f"expression {expr.source!r}: name the secret, as in "
                                 "'${{ secrets.API_TOKEN }}'")
            elif root not in expressions.ROOTS:
                problems.add(
                    loc,
                    f"expression {expr.source!r}: unknown name {root!r}; expressions read "
                    "inputs, steps, run or secrets"
                    f"{_did_you_mean(root, (*expressions.ROOTS, SECRETS_ROOT))}",
                )
            elif root == "inputs" and name != expressions.ALL and name not in flow.inputs:
                problems.add(loc, f"expression {expr.source!r}: unknown input {name!r}"
                             f"{_did_you_mean(name, flow.inputs)}")
            elif root == "steps" and name == expressions.ALL and allowed_steps is not None:
                problems.add(loc, f"expression {expr.source!r} reads every step; name the step it needs")
            elif root == "steps" and name != expressions.ALL:
                if name not in flow.steps:
                    problems.add(loc, f"expression {expr.source!r}: unknown step {name!r}"
                                 f"{_did_you_mean(name, flow.steps)}")
                elif name == step_id:
                    problems.add(loc, f"expression {expr.source!r}: a step cannot read its own output")
                elif allowed_steps is not None and name not in allowed_steps:
                    problems.add(loc, f"expression {expr.source!r} reads step {name!r}, which is not "
                                 f"upstream of this step: add {name!r} to needs")


def _check_with(step_loc: Loc, with_: dict[str, Any], model: type[BaseModel], problems: _Problems) -> None:
    """Check a ``with:`` block statically: keys always, types where the value has no expression."""
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    attr = {(f.alias or n): n for n, f in model.model_fields.items()}
    before = len(problems.items)
    for key in with_:
        if key not in fields:
            problems.add((*step_loc, "with", key), f"unknown key {key!r} for this action"
                         f"{_did_you_mean(key, fields)}; it takes {', '.join(sorted(fields))}")
    for key, field in fields.items():
        if field.is_required() and key not in with_:
            problems.add((*step_loc, "with"), f"missing required key {key!r}")
    literal = {k: v for k, v in with_.items() if k in fields and not expressions.has_expression(v)}
    for key, value in literal.items():  # type and field validators, one field at a time
        try:
            model.__pydantic_validator__.validate_assignment(model.model_construct(), attr[key], value)
        except ValidationError as exc:
            _pydantic_problems(exc, problems, (*step_loc, "with"), model)
    if len(problems.items) == before and len(literal) == len(with_):
        try:  # whole-model checks (e.g. "json or body, not both") once every field is literal
            model.model_validate(with_)
        except ValidationError as exc:
            _pydantic_problems(exc, problems, (*step_loc, "with"), model)


def check_flow(flow: Flow, registry: Registry, problems: _Problems) -> None:
    """Semantic checks of a shape-valid flow."""
    step_re = re.compile(STEP_ID_PATTERN)
    for step_id, step in flow.steps.items():
        loc: Loc = ("steps", step_id)
        if not step_re.match(step_id):
            problems.add(loc, f"bad step id {step_id!r}: use letters, digits, '_' and '-', "
                         "starting with a letter or '_'")
        seen: set[str] = set()
        for i, need in enumerate(step.needs):
            if need == step_id:
                problems.add((*loc, "needs", i), f"step {step_id!r} needs itself")
            elif need not in flow.steps:
                problems.add((*loc, "needs", i), f"unknown step {need!r}{_did_you_mean(need, flow.steps)}")
            elif need in seen:
                problems.add((*loc, "needs", i), f"{need!r} listed twice")
            seen.add(need)
        if step.uses not in registry:
            broken = [f"{k}: {v}" for k, v in registry.broken.items()]
            extra = f"; connectors that failed to load: {'; '.join(broken)}" if broken else ""
            problems.add((*loc, "uses"), f"unknown connector action {step.uses!r}"
                         f"{_did_you_mean(step.uses, registry.actions)}{extra}")
        else:
            model = registry.get(step.uses).With
            if model is not None:
                _check_with(loc, step.with_, model, problems)
        if step.when is not None:
            try:
                whole = expressions.whole_expression(step.when)
            except ExpressionError as exc:
                problems.add((*loc, "when"), str(exc))
            else:
                if whole is None:
                    problems.add((*loc, "when"), "when must be one expression: '${{ ... }}'")
    if problems.items:
        return  # cycles and references only make sense on a graph whose edges exist
    try:
        ancestors = _ancestors(flow)
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))
        problems.add(("steps", cycle[0], "needs"),
                     "cycle in needs: " + " -> ".join(cycle) + " (each step needs the next)")
        return
    for step_id, step in flow.steps.items():
        loc = ("steps", step_id)
        _check_expressions(step.with_, (*loc, "with"), flow, ancestors[step_id], problems, step_id,
                           allow_secrets=True)
        if step.when is not None:
            _check_expressions(step.when, (*loc, "when"), flow, ancestors[step_id], problems, step_id)
    _check_expressions(flow.outputs, ("outputs",), flow, None, problems)
    for name, spec in flow.inputs.items():
        for i, option in enumerate(spec.enum or []):
            if not _TYPE_CHECKS[spec.type](option):
                problems.add(("inputs", name, "enum", i),
                             f"expected {spec.type}, got {type(option).__name__} {option!r}")
        if not spec.required and spec.default is not None:
            err = input_type_error(spec, spec.default)
            if err:
                problems.add(("inputs", name, "default"), err)


def validate_flow(data: Any, *, source: str | None = None, lines: dict[Loc, int] | None = None,
                  registry: Registry | None = None) -> Flow:
    """Validate flow data (a dict); returns the Flow or raises FlowValidationError."""
    problems = _Problems(lines)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        problems.add((), f"a flow must be a mapping with name and steps, got {kind}")
        raise FlowValidationError(problems.items, source=source)
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        _pydantic_problems(exc, problems)
        raise FlowValidationError(problems.items, source=source) from None
    check_flow(flow, registry or default_registry(), problems)
    if problems.items:
        raise FlowValidationError(problems.items, source=source)
    return flow


def load_flow_file(path: str | Path, *, registry: Registry | None = None) -> Flow:
    """Read and validate one flow YAML file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowNotFound(source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowValidationError([Problem("", f"cannot read file: {exc}")], source=source) from None
    data, lines = parse_yaml(text, source)
    return validate_flow(data, source=source, lines=lines, registry=registry)


def flow_files(flows_dir: Path) -> list[Path]:
    """Every flow file under ``flows_dir``, sorted."""
    if not flows_dir.is_dir():
        return []
    return sorted(p for p in flows_dir.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())


def find_flow(ref: str, flows_dir: Path) -> Path:
    """A flow file by path, or by name under ``flows_dir`` (file name first, then ``name:``)."""
    as_path = Path(ref)
    if as_path.suffix in YAML_SUFFIXES or "/" in ref:
        if as_path.is_file():
            return as_path
        raise FlowNotFound(ref)
    for suffix in YAML_SUFFIXES:
        direct = flows_dir / f"{ref}{suffix}"
        if direct.is_file():
            return direct
    files = flow_files(flows_dir)
    for path in files:
        if path.stem == ref:
            return path
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and data.get("name") == ref:
            return path
    names = [p.stem for p in files]
    hint = _did_you_mean(ref, names)
    raise FlowNotFound(ref + hint, searched=str(flows_dir))


# --- inputs -----------------------------------------------------------------------------------

_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "any": lambda v: True,
}


def input_type_error(spec: InputSpec, value: Any) -> str | None:
    if not _TYPE_CHECKS[spec.type](value):
        return f"expected {spec.type}, got {type(value).__name__} {value!r}"
    if spec.enum is not None and value not in spec.enum:
        return f"must be one of {spec.enum!r}, got {value!r}"
    return None


def validate_inputs(flow: Flow, given: dict[str, Any] | None) -> dict[str, Any]:
    """Check inputs against the flow's declarations; returns them with defaults filled in."""
    given = dict(given or {})
    problems = _Problems()
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in flow.inputs:
            declared = ", ".join(sorted(flow.inputs)) or "none"
            problems.add(("inputs", name), f"unknown input{_did_you_mean(name, flow.inputs)}; "
                         f"declared: {declared}")
    for name, spec in flow.inputs.items():
        if name in given:
            err = input_type_error(spec, given[name])
            if err:
                problems.add(("inputs", name), err)
            resolved[name] = given[name]
        elif spec.required:
            problems.add(("inputs", name), f"missing required input ({spec.type})")
        else:
            resolved[name] = spec.default
    if problems.items:
        raise FlowValidationError(problems.items, source=f"flow {flow.name!r}")
    return resolved


def coerce_cli_input(flow: Flow, name: str, text: str) -> Any:
    """Turn ``--input name=text`` into the declared type (JSON for objects, arrays, any)."""
    import json

    spec = flow.inputs.get(name)
    kind = spec.type if spec else "any"
    try:
        if kind == "string":
            return text
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "boolean":
            lowered = text.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        return json.loads(text)
    except ValueError:
        if kind == "any":
            return text
        raise FlowValidationError(
            [Problem(f"inputs.{name}", f"expected {kind}, got {text!r}")], source="--input"
        ) from None
