"""Secret values and their masking.

A secret's value is resolved inside the worker at run time and registered here; everything
that lets text leave a process (log records, audit rows, dead-letter entries, error messages,
stored outputs, CLI output) passes it through :func:`redact` / :func:`redact_text`, which
replace every registered value with :data:`MASK`. The registry is per process and only grows:
a value once seen stays masked for the life of the process.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 3  # shorter values would mask ordinary text ("a", "1") everywhere

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(values: str | Iterable[str]) -> None:
    """Remember secret values so that they are masked from now on in this process."""
    global _pattern
    items = [values] if isinstance(values, str) else list(values)
    new = {v for v in items if isinstance(v, str) and len(v) >= MIN_SECRET_LEN} - _values
    if not new:
        return
    with _lock:
        _values.update(new)
        # Longest first, so a secret that contains another is masked whole.
        alternatives = sorted(_values, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in alternatives))


def known() -> frozenset[str]:
    """The secret values registered in this process."""
    return frozenset(_values)


def redact_text(text: str) -> str:
    """``text`` with every registered secret value replaced by :data:`MASK`."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secrets masked in every string (keys included)."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def forget_all() -> None:
    """Clear the registry (tests only)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None
