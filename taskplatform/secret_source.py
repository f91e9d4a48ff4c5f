"""Where ``${{ secrets.NAME }}`` values come from, at run time, inside the worker.

Looked up in this order:

1. the environment variable ``TASKPLATFORM_SECRET_<NAME>`` of the worker process;
2. the secrets file named by ``TASKPLATFORM_SECRETS_FILE``: a JSON object ``{"NAME": "value"}``
   (keep it readable by the worker's user only).

Every value read is registered with :mod:`taskplatform.secrets`, so it is masked wherever text
leaves the process. A secret that is not set is a permanent step error naming the secret.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from taskplatform import expressions, secrets
from taskplatform.errors import PermanentError

ROOT = expressions.SECRETS_ROOT
ENV_PREFIX = "TASKPLATFORM_SECRET_"


def names_in(value: Any) -> set[str]:
    """The secret names ``value``'s expressions read."""
    names: set[str] = set()
    for expr in expressions.iter_expressions(value):
        for root, name in expressions.references(expr):
            if root == ROOT and name != expressions.ALL:
                names.add(name)
    return names


def _file_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PermanentError(f"secrets file {path}: cannot read it ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise PermanentError(f"secrets file {path}: must hold a JSON object of NAME: value")
    return data


def resolve(names: set[str], *, secrets_file: Path | None = None) -> dict[str, str]:
    """The values of ``names``, registered for masking; PermanentError naming a missing one."""
    values: dict[str, str] = {}
    from_file: dict[str, Any] | None = None
    for name in sorted(names):
        value = os.environ.get(ENV_PREFIX + name)
        if value is None:
            if from_file is None:
                from_file = _file_values(secrets_file)
            raw = from_file.get(name)
            value = raw if isinstance(raw, str) else None
        if value is None:
            where = f"environment variable {ENV_PREFIX}{name}"
            if secrets_file is not None:
                where += f" or secrets file {secrets_file}"
            raise PermanentError(f"secret {name!r} is not set (looked in {where})")
        values[name] = value
    secrets.register(values.values())
    return values


def with_secrets(context: dict[str, Any], with_: Any, *, secrets_file: Path | None = None) -> dict[str, Any]:
    """``context`` plus the ``secrets`` a step's ``with:`` reads (unchanged when it reads none)."""
    names = names_in(with_)
    if not names:
        return context
    return {**context, ROOT: resolve(names, secrets_file=secrets_file)}
