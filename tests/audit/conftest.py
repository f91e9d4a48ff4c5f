"""Audit test helpers (the ``audit`` fixture lives in tests/conftest.py)."""

from __future__ import annotations


def attempts_by_step(run: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in sorted(run["steps"], key=lambda r: (r["step_id"], r["attempt"])):
        out.setdefault(row["step_id"], []).append(row)
    return out
