"""``python manage.py``: run flows, inspect them and their runs. No business logic here.

Exit codes: 0 ok / run succeeded, 1 run failed or canceled, 2 usage error, 3 invalid flow or
inputs, 4 backend unreachable, 5 timed out waiting, 6 not found.
"""

from taskplatform.cli import flows, ops, runs  # noqa: F401 - each module adds its commands to main
from taskplatform.cli.base import main

__all__ = ["main"]
