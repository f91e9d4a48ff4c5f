"""Structured logs: JSON lines (or readable text) carrying the run and step they come from.

Every line written while a step runs carries ``run_id``, ``step_id``, ``flow``, ``attempt``,
``tenant_id`` and ``correlation_id``, from a context variable the worker sets around the
step (:func:`bind_step`). Every formatted line, Celery's own included (its error logs dump
message bodies), passes through :func:`taskplatform.secrets.redact_text`: the masking lives in
the formatter, so no handler or logger can bypass it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery._state import get_current_task

from taskplatform.secrets import redact_text

CONTEXT_FIELDS = ("run_id", "step_id", "flow", "attempt", "tenant_id", "correlation_id")

_step: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_step", default=None)


def bind_step(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Attach ``fields`` (run_id, step_id, flow, ...) to every log line of this context.

    Every one of :data:`CONTEXT_FIELDS` is present on a step's lines (null when unknown, such
    as a run without tenant), so log queries can rely on the keys.
    """
    return _step.set({**dict.fromkeys(CONTEXT_FIELDS), **fields})


def unbind_step(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _step.reset(token)


def set_attempt(attempt: int) -> None:
    """Record the attempt number once the runtime knows it (after claiming the step)."""
    ctx = _step.get()
    if ctx is not None:
        ctx["attempt"] = attempt


@contextmanager
def step_context(**fields: Any) -> Iterator[None]:
    token = bind_step(**fields)
    try:
        yield
    finally:
        unbind_step(token)


def current_fields() -> dict[str, Any]:
    """The step fields of this context (empty outside a step)."""
    ctx = _step.get()
    return dict(ctx) if ctx else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the step's fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(current_fields())
        task = get_current_task()
        if task is not None and task.request.id:
            entry["task_id"] = task.request.id
            entry["task_name"] = task.name
        entry["process"] = record.process
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact_text(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal: time, level, logger, [run step attempt], message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(step)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = current_fields()
        if fields:
            parts = [f"{k}={fields[k]}" for k in ("flow", "run_id", "step_id", "attempt")
                     if fields.get(k) is not None]
            record.step = f" [{' '.join(parts)}]"
        else:
            record.step = ""
        try:
            return redact_text(super().format(record))
        finally:
            del record.step


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``TASKPLATFORM_LOG_FORMAT`` (``json`` or ``text``)."""
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure_logging(*, log_format: str = "json", level: int | str = logging.INFO,
                      logfile: str | None = None) -> logging.Handler:
    """Send every log record (root logger) through our formatter to stderr or ``logfile``."""
    handler: logging.Handler
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Celery's loggers propagate to the root; make sure none keeps a handler of its own.
    for name in ("celery", "celery.task", "celery.redirected"):
        logging.getLogger(name).handlers = []
    return handler
