"""Exceptions raised by taskplatform.

The hierarchy::

    PlatformError
    ├── ConfigError              bad settings or environment
    │   └── AuditSchemaError     the audit database's schema is older (or newer) than the code
    ├── FlowError
    │   ├── FlowValidationError  a flow or its inputs do not validate (carries every problem)
    │   ├── FlowNotFound         no flow of that name or path
    │   ├── RunNotFound          no run with that id
    │   ├── FlowFailed           a run ended failed (names the step and its error)
    │   │   └── RunLost          the run's state vanished from Redis while we waited
    │   ├── RunTimeout           wait() gave up before the run finished
    │   └── RunStateError        cancel/resume/replay does not apply to the run as it is
    ├── DeadLetterNotFound       no dead-letter entry with that id
    ├── ConnectorError
    │   ├── ConnectorNotFound    unknown ``connector.action``
    │   ├── TransientError       worth retrying (5xx, 429, timeouts, connection errors)
    │   │   └── StepTimedOut     an attempt ran past its timeout_s
    │   └── PermanentError       retrying will not help (4xx, bad input, non-zero exit)
    ├── ExpressionError          a ``${{ }}`` expression does not parse or evaluate
    └── BackendError             Redis could not be reached or answered an error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PlatformError(Exception):
    """Root of every error taskplatform raises on purpose."""


class ConfigError(PlatformError):
    """Settings or environment are wrong."""


class AuditSchemaError(ConfigError):
    """The audit database is not at the schema revision this code writes."""


class FlowError(PlatformError):
    """Something is wrong with a flow or a run of it."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (a dotted path, maybe a line) and what."""

    path: str
    message: str
    line: int | None = None

    def render(self, source: str | None) -> str:
        where = source or "<flow>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FlowValidationError(FlowError):
    """A flow, or the inputs given to it, failed validation; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(p.render(source) for p in self.problems))


class FlowNotFound(FlowError):
    """No flow with that name or path."""

    def __init__(self, ref: str, searched: str = "") -> None:
        self.ref = ref
        msg = f"flow not found: {ref!r}"
        super().__init__(f"{msg} (looked in {searched})" if searched else msg)


class RunNotFound(FlowError):
    """No run with that id (never submitted, or its state has expired)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run not found: {run_id!r}")


class FlowFailed(FlowError):
    """A run ended ``failed`` or ``canceled``; ``step`` and ``error`` say where and why."""

    def __init__(self, run_id: str, status: str, step: str | None, error: str | None) -> None:
        self.run_id, self.status, self.step, self.error = run_id, status, step, error
        where = f" at step {step!r}" if step else ""
        super().__init__(f"run {run_id} {status}{where}: {error or 'no error recorded'}")


class RunLost(FlowFailed):
    """The run's state vanished from Redis (restarted without persistence, or expired)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, "failed", None,
                         "its state vanished from Redis (Redis restarted without persistence, "
                         "flushed, or the run expired); it cannot be driven on from Redis")


class RunTimeout(FlowError):
    """``wait(timeout=...)`` elapsed before the run reached a terminal status."""

    def __init__(self, run_id: str, timeout_s: float, status: str) -> None:
        self.run_id, self.timeout_s, self.status = run_id, timeout_s, status
        super().__init__(f"run {run_id} still {status} after {timeout_s:g}s")


class RunStateError(FlowError):
    """The run is not in a state where this operation applies (resume a running run, ...)."""


class DeadLetterNotFound(PlatformError):
    """No dead-letter entry with that id."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"dead letter not found: {entry_id!r}")


class ConnectorError(PlatformError):
    """A connector action failed; ``http_status`` is set when an HTTP answer said so."""

    def __init__(self, *args: object, http_status: int | None = None) -> None:
        super().__init__(*args)
        self.http_status = http_status


class ConnectorNotFound(ConnectorError):
    """No connector action of that name is registered."""

    def __init__(self, name: str, suggestion: str | None = None) -> None:
        self.name = name
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        super().__init__(f"unknown connector action {name!r}{hint}")


class TransientError(ConnectorError):
    """A failure that may pass: the step is retried under its retry policy."""


class PermanentError(ConnectorError):
    """A failure that retrying will not fix: the step fails at once."""


class ExpressionError(PlatformError):
    """A ``${{ }}`` expression is malformed or failed to evaluate."""


class BackendError(PlatformError):
    """Redis (or another backend) is unreachable or answered with an error."""


class StepTimedOut(TransientError):
    """A step attempt ran past its ``timeout_s``."""
