"""Attempts left ``started`` by a worker that died: settle them as failed once overdue.

A row's ``expires_at`` is its start plus the step's hard time limit plus a margin
(defaults.AUDIT_ABANDON_MARGIN_S): past it, no live worker can still be running the attempt.
Lost children whose message is redelivered are closed earlier, when the next attempt starts
(see events.py); this catches the rest (a whole worker killed, a run that was abandoned).
A real outcome that arrives later still overwrites the swept row.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, and_, update

from taskplatform.audit.events import STARTED, WORKER_LOST, stamp
from taskplatform.audit.models import task_execution_audit as attempts


def sweep(conn: Connection, *, now_s: float | None = None) -> int:
    """Mark overdue ``started`` rows failed (WorkerLost); returns how many."""
    now = stamp(now_s if now_s is not None else time.time())
    result = conn.execute(
        update(attempts)
        .where(and_(attempts.c.status == STARTED, attempts.c.expires_at < now))
        .values(status="failed", error_type=WORKER_LOST, completed_at=now, updated_at=now,
                expires_at=None,
                error_message="no outcome recorded before the attempt's deadline (worker lost)")
    )
    return int(result.rowcount or 0)
