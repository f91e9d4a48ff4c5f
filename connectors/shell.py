"""``shell.run``: run a command from an argv list, never through a shell.

A non-zero exit fails the step (permanently) unless ``allow_failure`` is set; a timeout is
transient. The output is ``{exit_code, stdout, stderr}``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from pydantic import Field

from connectors.base import Connector, With
from taskplatform.errors import PermanentError, TransientError

MAX_OUTPUT_CHARS = 1_000_000


class RunWith(With):
    argv: list[str] = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(300.0, gt=0)
    allow_failure: bool = False
    stdin: str | None = None


class Run(Connector):
    """Run a program with arguments (no shell: no injection through arguments)."""

    name = "shell.run"
    With = RunWith

    def execute_action(self, inputs: RunWith) -> dict[str, Any]:
        program = inputs.argv[0]
        # Without stdin the child reads nothing (not the worker's own stdin, where it could hang).
        feed: dict[str, Any] = (
            {"input": inputs.stdin} if inputs.stdin is not None else {"stdin": subprocess.DEVNULL}
        )
        try:
            done = subprocess.run(
                inputs.argv,
                cwd=inputs.cwd,
                env={**os.environ, **inputs.env},
                **feed,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=inputs.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            if inputs.cwd is not None and not os.path.isdir(inputs.cwd):
                raise PermanentError(f"cwd does not exist: {inputs.cwd!r}") from exc
            raise PermanentError(f"command not found: {program!r}") from exc
        except PermissionError as exc:
            raise PermanentError(f"command not executable: {program!r}") from exc
        except NotADirectoryError as exc:
            if inputs.cwd is not None and not os.path.isdir(inputs.cwd):
                raise PermanentError(f"cwd is not a directory: {inputs.cwd!r}") from exc
            raise PermanentError(f"command not found: {program!r}") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"{program!r} timed out after {inputs.timeout_s:g}s") from exc
        output = {
            "exit_code": done.returncode,
            "stdout": _cap(done.stdout),
            "stderr": _cap(done.stderr),
        }
        if done.returncode != 0 and not inputs.allow_failure:
            tail = done.stderr.strip().splitlines()[-3:] if done.stderr else []
            detail = f": {' | '.join(tail)}" if tail else ""
            raise PermanentError(f"{program!r} exited with {done.returncode}{detail}")
        return output


def _cap(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[truncated {len(text) - MAX_OUTPUT_CHARS} chars]"
