"""Audit events (plain JSON dicts, as spooled) and how each is applied to the database.

Every apply is an idempotent upsert, so a redelivered message, a replayed spool batch or a
second drainer never makes a duplicate row:

- ``attempt``: one row per (run, step, attempt, Celery task id). A final status (succeeded,
  failed, dead_lettered, revoked, skipped, ...) overwrites anything; ``started`` and
  ``retrying`` never overwrite a final one. Columns the event leaves empty keep their value.
  A new attempt closes earlier attempts of the step still ``started`` (their worker was lost).
- ``run_submitted`` inserts the flow row ``running`` (or fills in a row a late event made).
- ``run_finished`` sets the terminal status, outputs, error and completed_at.
- ``run_resumed`` puts a finished row back to ``running`` unless it finished again later.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, or_, update
from sqlalchemy.dialects import postgresql, sqlite

from taskplatform import defaults
from taskplatform.audit.models import flow_run_history as runs
from taskplatform.audit.models import task_execution_audit as attempts

RUNNING = "running"
STARTED = "started"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
OPEN_STATUSES = (STARTED, RETRYING)  # an attempt row that a later event may still settle
WORKER_LOST = "WorkerLost"

ATTEMPT_FIELDS = (
    "handler", "attempts", "execution_mode", "queue", "worker_id", "tenant_id", "correlation_id",
    "input_data", "output_data", "output_truncated", "error_message", "error_type",
    "execution_time_ms",
)


def stamp(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), UTC)


def bounded(value: Any, limit: int = defaults.AUDIT_MAX_JSON_BYTES) -> tuple[Any, bool]:
    """``value`` as is, or a marker when its JSON is larger than ``limit`` bytes; and whether cut."""
    if value is None:
        return None, False
    text = json.dumps(value, default=str, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return value, False
    return {"_truncated": True, "size_bytes": len(text.encode()),
            "preview": text[: defaults.AUDIT_PREVIEW_CHARS]}, True


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def apply(conn: Connection, event: dict[str, Any]) -> None:
    """Write one event (see the module docstring for what each kind does)."""
    kind = event["kind"]
    if kind == "attempt":
        _apply_attempt(conn, event)
    elif kind == "run_submitted":
        _apply_submitted(conn, event)
    elif kind == "run_finished":
        _apply_finished(conn, event)
    elif kind == "run_resumed":
        _apply_resumed(conn, event)
    else:
        raise ValueError(f"unknown audit event kind {kind!r}")


def apply_batch(conn: Connection, batch: list[dict[str, Any]]) -> None:
    """Write a batch in one round of statements: attempt events merged per row, in order.

    Events of one attempt row are folded together first (the same rules as the upsert), so
    one multi-row upsert never touches a row twice; run events follow in their order.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    superseding: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for e in batch:
        if e["kind"] != "attempt":
            others.append(e)
            continue
        values = _attempt_values(e)
        key = (values["run_id"], values["step_id"], values["attempt"], values["task_id"])
        prev = merged.get(key)
        merged[key] = values if prev is None else _fold(prev, values)
        if e["status"] == STARTED and int(e["attempt"]) > 1:
            superseding.append(e)
    if merged:
        conn.execute(_statement(conn, "attempt"), list(merged.values()))
    for e in superseding:
        _supersede(conn, e)
    if any(e["kind"] == "run_resumed" for e in others):
        for e in others:  # resumes and finishes of one run must keep their order
            apply(conn, e)
        return
    # Without resumes the order of run events does not matter: a submit never touches the
    # status, a finish always sets it. One row per run and kind (the last event wins).
    submitted = {e["run_id"]: _submitted_values(e) for e in others if e["kind"] == "run_submitted"}
    finished = {e["run_id"]: _finished_values(e) for e in others if e["kind"] == "run_finished"}
    if submitted:
        conn.execute(_statement(conn, "submitted"), list(submitted.values()))
    if finished:
        conn.execute(_statement(conn, "finished"), list(finished.values()))


def _fold(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` applied on top of ``old`` as the upsert would (see the module docstring)."""
    if new["status"] in OPEN_STATUSES and old["status"] not in OPEN_STATUSES:
        return old
    out = dict(old)
    for f in ATTEMPT_FIELDS:
        if new[f] is not None:
            out[f] = new[f]
    if new["status"] == SUCCEEDED:
        out["error_message"] = out["error_type"] = None
    out.update(status=new["status"], output_truncated=new["output_truncated"],
               updated_at=new["updated_at"], expires_at=new["expires_at"],
               completed_at=new["completed_at"] or old["completed_at"])
    return out


def _attempt_values(e: dict[str, Any]) -> dict[str, Any]:
    at = stamp(e["at"])
    final = e["status"] not in OPEN_STATUSES
    e.pop("output_key", None)  # written directly, without the spool's output lookup
    values = {
        "run_id": e["run_id"], "step_id": e["step_id"], "attempt": int(e["attempt"]),
        "task_id": e.get("task_id") or "", "status": e["status"],
        **{f: e.get(f) for f in ATTEMPT_FIELDS},
        "created_at": at, "updated_at": at,
        "completed_at": at if final else None,
        "expires_at": None if final else stamp(e.get("expires_at")),
    }
    values["attempts"] = int(values["attempts"] or e["attempt"])
    values["output_truncated"] = bool(values["output_truncated"])
    return values


def _attempt_upsert(conn: Connection) -> Any:
    stmt = _insert(conn, attempts)
    x = stmt.excluded
    keep = {f: _coalesce(x[f], attempts.c[f]) for f in ATTEMPT_FIELDS if f != "output_truncated"}
    for f in ("error_message", "error_type"):  # a success clears what a sweep or loss wrote
        keep[f] = case((x.status == SUCCEEDED, None), else_=keep[f])
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "step_id", "attempt", "task_id"],
        set_={**keep, "status": x.status, "output_truncated": x.output_truncated,
              "updated_at": x.updated_at, "expires_at": x.expires_at,
              "completed_at": _coalesce(x.completed_at, attempts.c.completed_at)},
        # Spelled out, not IN (...): expanding parameters cannot go through executemany.
        where=or_(and_(x.status != STARTED, x.status != RETRYING),
                  attempts.c.status == STARTED, attempts.c.status == RETRYING),
    )


def _apply_attempt(conn: Connection, e: dict[str, Any]) -> None:
    conn.execute(_statement(conn, "attempt"), [_attempt_values(e)])
    if e["status"] == STARTED and int(e["attempt"]) > 1:
        _supersede(conn, e)


def _supersede(conn: Connection, e: dict[str, Any]) -> None:
    """Close earlier attempts of the step still ``started``: their worker was lost."""
    at = stamp(e["at"])
    conn.execute(
        update(attempts)
        .where(and_(attempts.c.run_id == e["run_id"], attempts.c.step_id == e["step_id"],
                    attempts.c.attempt < int(e["attempt"]), attempts.c.status == STARTED))
        .values(status="failed", error_type=WORKER_LOST, completed_at=at, updated_at=at,
                expires_at=None,
                error_message=f"no outcome recorded; attempt {e['attempt']} started after it "
                              "(its worker was lost)")
    )


def _coalesce(new: Any, old: Any) -> Any:
    from sqlalchemy import func  # noqa: PLC0415

    return func.coalesce(new, old)


def _submitted_values(e: dict[str, Any]) -> dict[str, Any]:
    at = stamp(e["at"])
    return {
        "run_id": e["run_id"], "flow_id": e["flow_id"], "tenant_id": e.get("tenant_id"),
        "user_id": e.get("user_id"), "correlation_id": e.get("correlation_id"),
        "status": RUNNING, "input_data": e.get("input_data"),
        "execution_context": e.get("execution_context"), "created_at": at, "updated_at": at,
    }


def _finished_values(e: dict[str, Any]) -> dict[str, Any]:
    at = stamp(e["at"])
    return {
        "run_id": e["run_id"], "flow_id": e.get("flow_id") or "?", "status": e["status"],
        "output_data": e.get("output_data"), "error_message": e.get("error_message"),
        "failed_step": e.get("failed_step"), "created_at": at, "updated_at": at, "completed_at": at,
    }


def _submitted_upsert(conn: Connection) -> Any:
    stmt = _insert(conn, runs)
    x = stmt.excluded
    return stmt.on_conflict_do_update(  # never the status: a late submit does not reopen a run
        index_elements=["run_id"],
        set_={"flow_id": x.flow_id, "tenant_id": x.tenant_id, "user_id": x.user_id,
              "correlation_id": x.correlation_id, "input_data": x.input_data,
              "execution_context": x.execution_context, "created_at": x.created_at},
    )


def _finished_upsert(conn: Connection) -> Any:
    stmt = _insert(conn, runs)
    x = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["run_id"],
        set_={"status": x.status, "output_data": x.output_data, "error_message": x.error_message,
              "failed_step": x.failed_step, "updated_at": x.updated_at,
              "completed_at": x.completed_at},
    )


def _apply_submitted(conn: Connection, e: dict[str, Any]) -> None:
    conn.execute(_statement(conn, "submitted"), [_submitted_values(e)])


def _apply_finished(conn: Connection, e: dict[str, Any]) -> None:
    conn.execute(_statement(conn, "finished"), [_finished_values(e)])


_BUILDERS = {"attempt": lambda c: _attempt_upsert(c), "submitted": lambda c: _submitted_upsert(c),
             "finished": lambda c: _finished_upsert(c)}
_statements: dict[tuple[str, str], Any] = {}


def _statement(conn: Connection, name: str) -> Any:
    """Upserts are built once per dialect (building ``excluded`` each time costs more than
    running them), then executed with fresh parameters."""
    key = (conn.dialect.name, name)
    stmt = _statements.get(key)
    if stmt is None:
        stmt = _statements[key] = _BUILDERS[name](conn)
    return stmt


def _apply_resumed(conn: Connection, e: dict[str, Any]) -> None:
    at = stamp(e["at"])
    conn.execute(
        update(runs)
        .where(and_(runs.c.run_id == e["run_id"],
                    or_(runs.c.completed_at.is_(None), runs.c.completed_at <= at)))
        .values(status=RUNNING, completed_at=None, error_message=None, failed_step=None,
                updated_at=at)
    )


def now() -> float:
    return time.time()
