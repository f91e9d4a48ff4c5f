"""The ``manage.py`` click group, its exit codes and the helpers every command shares."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from taskplatform.errors import (
    BackendError,
    ConfigError,
    FlowNotFound,
    FlowValidationError,
    RunNotFound,
)

RET_OK, RET_FAILED, RET_USAGE, RET_INVALID, RET_BACKEND, RET_TIMEOUT, RET_NOT_FOUND = range(7)
STATUS_MARK = {"succeeded": "✓", "failed": "✗", "dead_lettered": "✗", "upstream_failed": "⊘",
               "skipped": "↷", "canceled": "⊘", "running": "…", "retrying": "↻", "waiting": "⏸",
               "pending": " "}


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Translate our errors into a message on stderr and a named exit code: no tracebacks."""
    try:
        yield
    except FlowValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(RET_INVALID)
    except (FlowNotFound, RunNotFound) as exc:
        _fail(str(exc), RET_NOT_FOUND)
    except (BackendError, ConfigError) as exc:
        _fail(str(exc), RET_BACKEND)


@contextlib.contextmanager
def _client() -> Iterator[Any]:
    """A client on REDIS_URL, or on an embedded Redis and worker for the command's duration."""
    from taskplatform.app import app  # noqa: PLC0415 - keep --help fast
    from taskplatform.audit.db import startup_check  # noqa: PLC0415
    from taskplatform.client import Client  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    settings = load_settings()
    startup_check(settings)
    if settings.embedded:
        from taskplatform.embedded import embedded_stack  # noqa: PLC0415

        with embedded_stack(app, settings):
            yield Client(app)
    else:
        yield Client(app)


def _flows_dir() -> Path:
    from taskplatform.settings import load_settings  # noqa: PLC0415

    return load_settings().flows_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """taskplatform: run flows of connector actions on Celery.

    \b
    Examples:
      python manage.py run-flow flows/examples/hello.yaml --input who=ada
      python manage.py flows list
      python manage.py flows graph diamond
      python manage.py status 3f2a...
      python manage.py dlq list
      python manage.py resume 3f2a...
    """
    from taskplatform.logs import configure_logging  # noqa: PLC0415
    from taskplatform.secrets import install_log_redaction  # noqa: PLC0415

    install_log_redaction()
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    # Readable text here (steps of the embedded worker log with their run and step), secrets
    # masked; JSON lines when TASKPLATFORM_LOG_FORMAT=json asks for them.
    log_format = "json" if os.environ.get("TASKPLATFORM_LOG_FORMAT") == "json" else "text"
    if not logging.getLogger().handlers:  # like basicConfig: leave a configured process alone
        configure_logging(log_format=log_format, level=level)


@contextlib.contextmanager
def _remote_client() -> Iterator[Any]:
    """A client on REDIS_URL: these commands act on runs of a shared Redis."""
    from taskplatform.errors import DeadLetterNotFound, RunStateError  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    with _errors():
        if load_settings().embedded:
            _fail("REDIS_URL is not set: runs of the embedded Redis end with their process", RET_BACKEND)
        try:
            with _client() as client:
                yield client
        except RunStateError as exc:
            _fail(str(exc), RET_FAILED)
        except DeadLetterNotFound as exc:
            _fail(str(exc), RET_NOT_FOUND)


