"""``${{ expr }}`` templates: JMESPath over ``{inputs, steps, run}``; never executes code.

A value that is exactly one expression keeps the expression's JSON type; an expression inside
a longer string is interpolated as text (strings as they are, everything else as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
from jmespath import exceptions as jp_exc

from taskplatform.errors import ExpressionError

OPEN = "${{"
CLOSE = "}}"
ROOTS = ("inputs", "steps", "run")
# ``${{ secrets.NAME }}``: only in a step's ``with:``, resolved by the worker at run time
# (taskplatform.secret_source), never stored with the run.
SECRETS_ROOT = "secrets"
ALL = "*"  # a reference to a whole root (``steps.*``, ``@``)


@dataclass(frozen=True)
class Expression:
    """One compiled ``${{ }}`` expression."""

    source: str
    compiled: Any

    def evaluate(self, context: dict[str, Any]) -> Any:
        try:
            return self.compiled.search(context)
        except jp_exc.JMESPathError as exc:
            raise ExpressionError(f"expression {self.source!r} failed: {exc}") from exc


def _scan_close(text: str, start: int) -> tuple[int, str]:
    """Index of the ``}}`` closing the expression that starts at ``start`` (or -1), and the
    quote character left open when there is none.

    Skips braces and ``}}`` inside JMESPath literals (backticks) and quoted strings, so
    ``${{ {a: `{"b": 1}`} }}`` closes where a reader expects.
    """
    depth, i, quote = 0, start, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "`'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0 and text.startswith(CLOSE, i):
                return i, ""
            depth -= 1
        i += 1
    return -1, quote


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Compile one JMESPath expression (without the ``${{ }}``)."""
    if not source.strip():
        raise ExpressionError("empty expression '${{ }}'")
    try:
        return Expression(source, jmespath.compile(source))
    except jp_exc.ParseError as exc:
        pos = getattr(exc, "lex_position", None)
        at = f" at column {pos + 1}" if isinstance(pos, int) else ""
        token = getattr(exc, "token_value", None)
        near = f" near {token!r}" if token not in (None, "") else ""
        raise ExpressionError(f"malformed expression {source!r}{at}{near}: {_parse_reason(exc)}") from exc
    except jp_exc.JMESPathError as exc:
        raise ExpressionError(f"malformed expression {source!r}: {exc}") from exc


def _parse_reason(exc: jp_exc.ParseError) -> str:
    """What JMESPath found wrong, in one line (its own message draws a caret over lines)."""
    if isinstance(exc, jp_exc.IncompleteExpressionError):
        return "the expression ends too soon"
    if isinstance(exc, jp_exc.LexerError):
        return str(getattr(exc, "message", "") or "cannot read it").lower()
    reason = str(getattr(exc, "msg", "") or "cannot parse it")
    return reason[:1].lower() + reason[1:]


@lru_cache(maxsize=4096)
def parse_template(text: str) -> tuple[str | Expression, ...]:
    """Split a string into literal text and compiled expressions."""
    parts: list[str | Expression] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            break
        end, quote = _scan_close(text, start + len(OPEN))
        if end < 0:
            why = f"a {quote} in it is never closed" if quote else "missing '}}'"
            raise ExpressionError(f"unclosed '${{{{' in {text!r} ({why})")
        if start > pos:
            parts.append(text[pos:start])
        parts.append(compile_expression(text[start + len(OPEN) : end].strip()))
        pos = end + len(CLOSE)
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def has_expression(value: Any) -> bool:
    """True if ``value`` (or anything inside it) holds a ``${{ }}`` expression."""
    if isinstance(value, str):
        return OPEN in value
    if isinstance(value, dict):
        return any(has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(has_expression(v) for v in value)
    return False


def whole_expression(text: str) -> Expression | None:
    """The expression if ``text`` is exactly one ``${{ }}`` (outer whitespace aside)."""
    parts = parse_template(text.strip())
    if len(parts) == 1 and isinstance(parts[0], Expression):
        return parts[0]
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def render(value: Any, context: dict[str, Any]) -> Any:
    """Resolve every expression inside ``value`` (dicts and lists walked) against ``context``."""
    if isinstance(value, str):
        if OPEN not in value:
            return value
        whole = whole_expression(value)
        if whole is not None:
            return whole.evaluate(context)
        return "".join(
            p if isinstance(p, str) else _as_text(p.evaluate(context)) for p in parse_template(value)
        )
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def truthy(value: Any) -> bool:
    """``when:`` truth: false, null, 0, and empty strings, lists and objects are false."""
    return bool(value)


def iter_expressions(value: Any) -> Iterator[Expression]:
    """Every compiled expression inside ``value``; raises ExpressionError on a bad one."""
    if isinstance(value, str):
        if OPEN in value:
            for part in parse_template(value):
                if isinstance(part, Expression):
                    yield part
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_expressions(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_expressions(v)


_RELATIVE_AFTER_FIRST = {
    "subexpression",
    "index_expression",
    "projection",
    "value_projection",
    "filter_projection",
    "pipe",
}


def _walk(node: dict[str, Any], at_root: bool, out: set[tuple[str, str]]) -> None:
    kind = node.get("type")
    children = node.get("children", [])
    if kind == "field":
        if at_root:
            out.add((node["value"], ALL))
        return
    if kind == "current":
        if at_root:
            out.add((ALL, ALL))
        return
    if kind == "subexpression" and children:
        left, right = children[0], children[1] if len(children) > 1 else None
        if at_root and left.get("type") == "field" and right is not None and right.get("type") == "field":
            out.add((left["value"], right["value"]))
            return
    if kind == "expref":
        return
    if kind in _RELATIVE_AFTER_FIRST:
        if children:
            _walk(children[0], at_root, out)
            for child in children[1:]:
                _walk(child, False, out)
        return
    for child in children:
        if isinstance(child, dict):
            _walk(child, at_root, out)


def references(expr: Expression) -> set[tuple[str, str]]:
    """Names an expression reads from the context root: ``{("steps", "fetch"), ("inputs", "*")}``.

    The second element is ``"*"`` when the expression reads the whole root (``steps.*``).
    """
    out: set[tuple[str, str]] = set()
    _walk(expr.compiled.parsed, True, out)
    return out
