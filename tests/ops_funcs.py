"""Functions the operations tests call with ``python.call`` inside real workers."""

from __future__ import annotations

import logging

from taskplatform import secrets
from taskplatform.errors import PermanentError

log = logging.getLogger("tests.ops_funcs")


def leak_secret(token: str) -> None:
    """Behave like a careless step given a secret: log it, print it, fail with it in the message.

    Registering it first stands in for the secret resolver, which registers every value it
    resolves in the worker process that runs the step.
    """
    secrets.register(token)
    log.warning("calling the API with token %s", token)
    print(f"debug: token={token}")
    raise PermanentError(f"the API refused token {token}")


def chatty(n: int = 1) -> dict[str, int]:
    for i in range(n):
        log.info("chatty line %d", i)
    return {"n": n}
