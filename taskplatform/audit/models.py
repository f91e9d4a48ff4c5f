"""The two audit tables (DESIGN.md names), as SQLAlchemy Core tables; migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# JSONB on Postgres (indexable, compact), plain JSON text elsewhere (SQLite); None is SQL NULL,
# so an event that leaves a column out keeps what an earlier one wrote (COALESCE).
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Stamp = DateTime(timezone=True)

flow_run_history = Table(
    "flow_run_history",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("flow_id", String(200), nullable=False),
    Column("tenant_id", String(200)),
    Column("user_id", String(200)),
    Column("correlation_id", String(200)),
    Column("status", String(32), nullable=False),
    Column("input_data", Json),
    Column("output_data", Json),
    # The frozen spec Client.submit wrote to run:{id}:spec (flow, resolved inputs, run context):
    # enough to re-drive the run from the audit alone.
    Column("execution_context", Json),
    Column("error_message", Text),
    Column("failed_step", String(200)),
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
    Column("completed_at", Stamp),
    Index("ix_flow_run_history_flow_created", "flow_id", "created_at"),
    Index("ix_flow_run_history_status_created", "status", "created_at"),
    Index("ix_flow_run_history_created", "created_at"),
)

task_execution_audit = Table(
    "task_execution_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("step_id", String(200), nullable=False),
    # 0 for a step that settled without running (skipped, upstream_failed, canceled).
    Column("attempt", Integer, nullable=False),
    # The Celery task id of the delivery ('' when none): a replay under a new message gets
    # its own row even if the engine numbers its attempts from 1 again.
    Column("task_id", String(64), nullable=False, default=""),
    Column("handler", String(200)),  # connector action, e.g. http.request
    Column("status", String(32), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),  # attempts made so far for the step
    Column("execution_mode", String(16)),  # sync | async | cpu
    Column("queue", String(64)),
    Column("worker_id", String(200)),
    Column("tenant_id", String(200)),
    Column("correlation_id", String(200)),
    Column("input_data", Json),
    Column("output_data", Json),
    # True when output_data holds a marker instead of the whole output (too large to keep).
    Column("output_truncated", Boolean, nullable=False, default=False),
    Column("error_message", Text),
    Column("error_type", String(200)),
    Column("execution_time_ms", Float),
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
    Column("completed_at", Stamp),
    # When a `started` row with no outcome is considered abandoned (hard limit + margin).
    Column("expires_at", Stamp),
    UniqueConstraint("run_id", "step_id", "attempt", "task_id", name="uq_task_execution_audit_attempt"),
    Index("ix_task_execution_audit_run", "run_id", "step_id"),
    Index("ix_task_execution_audit_status_expires", "status", "expires_at"),
)
