"""Queries on the audit: one run with its attempts, runs by flow/status/time, runs still running.

These read the database only, so they work once Redis has forgotten a run (or lost it).
Rows come back as plain dicts (JSON columns decoded, times as timezone-aware datetimes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from taskplatform.audit import db
from taskplatform.audit.models import flow_run_history as runs
from taskplatform.audit.models import task_execution_audit as attempts
from taskplatform.errors import BackendError

DEFAULT_LIMIT = 50


def _url(url: str | None) -> str:
    if url is not None:
        return url
    from taskplatform.settings import load_settings  # noqa: PLC0415

    return db.database_url(load_settings().database_url)


def _rows(url: str, stmt: Any) -> list[dict[str, Any]]:
    try:
        db.check_schema(url)
        with db.get_engine(url).connect() as conn:
            return [_fix_times(dict(r._mapping)) for r in conn.execute(stmt)]
    except SQLAlchemyError as exc:
        raise BackendError(f"audit database {db.safe_url(url)}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0]}") from exc


def _fix_times(row: dict[str, Any]) -> dict[str, Any]:
    for k, v in row.items():  # SQLite hands back naive datetimes; they are UTC
        if isinstance(v, datetime) and v.tzinfo is None:
            row[k] = v.replace(tzinfo=UTC)
    return row


def load_run(run_id: str, *, url: str | None = None) -> dict[str, Any] | None:
    """The flow row of ``run_id`` with ``steps``: its attempt rows in order; None if unknown.

    Raises BackendError when the database cannot be read.
    """
    url = _url(url)
    found = _rows(url, select(runs).where(runs.c.run_id == run_id))
    if not found:
        return None
    run = found[0]
    run["steps"] = _rows(url, select(attempts).where(attempts.c.run_id == run_id)
                         .order_by(attempts.c.id))
    return run


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time (UTC when no zone) or an age: ``90s``, ``15m``, ``2h``, ``7d``."""
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use an ISO time (2026-11-23T10:00) or an age "
                         "(90s, 15m, 2h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def list_runs(flow: str | None = None, status: str | None = None, since: datetime | None = None,
              limit: int = DEFAULT_LIMIT, *, url: str | None = None) -> list[dict[str, Any]]:
    """Flow rows, newest first, filtered by flow name, status and creation time."""
    stmt = select(runs)
    if flow:
        stmt = stmt.where(runs.c.flow_id == flow)
    if status:
        stmt = stmt.where(runs.c.status == status)
    if since is not None:
        stmt = stmt.where(runs.c.created_at >= since)
    return _rows(_url(url), stmt.order_by(runs.c.created_at.desc()).limit(limit))


def running_runs(*, url: str | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
    """Runs the audit still has as ``running`` (oldest first), with their execution context."""
    stmt = select(runs).where(runs.c.status == "running").order_by(runs.c.created_at).limit(limit)
    return _rows(_url(url), stmt)


def step_summary(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each step's latest row as ``{status, attempts, error}`` (the shape ``Run.info()`` uses)."""
    out: dict[str, dict[str, Any]] = {}
    order = _step_order(run)
    for row in run.get("steps", []):
        out[row["step_id"]] = {"status": row["status"], "attempts": row["attempt"],
                               "error": row["error_message"] if row["status"] != "succeeded" else None}
    return {sid: out[sid] for sid in order if sid in out} | {
        sid: v for sid, v in out.items() if sid not in order}


def _step_order(run: dict[str, Any]) -> list[str]:
    """The flow's step order as the engine reports it (compiled from the stored spec)."""
    ctx = run.get("execution_context") or {}
    try:
        from connectors.base import default_registry  # noqa: PLC0415
        from taskplatform.engine import RunSpec  # noqa: PLC0415

        return list(RunSpec.from_json(run["run_id"], ctx, default_registry()).plan.order)
    except Exception:  # noqa: BLE001 - an old or partial context still lists its steps
        return list((ctx.get("flow") or {}).get("steps") or {})
