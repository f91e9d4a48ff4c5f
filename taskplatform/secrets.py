"""Secret values and their masking.

A secret's value is resolved inside the worker at run time and registered here; everything
that lets text leave a process (log records, audit rows, dead-letter entries, error messages,
stored outputs, CLI output) passes it through :func:`redact` / :func:`redact_text`, which
replace every registered value with :data:`MASK`. The registry is per process and only grows:
a value once seen stays masked for the life of the process.
"""

from __future__ import annotations

import logging
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


# --- logs -------------------------------------------------------------------------------------

_factory_installed = False


def install_log_redaction() -> None:
    """Mask registered secrets in every log record this process makes from now on.

    Wraps the log record factory (not a handler filter), so it covers handlers added later,
    Celery's own loggers and records whose traceback would dump a value: the message is
    rendered and masked, and the traceback is formatted and masked ahead of the formatter.
    """
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _pattern is not None:
            _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)


_formatter = logging.Formatter()


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is left for logging to report
        return
    record.msg, record.args = redact_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_text(_formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
