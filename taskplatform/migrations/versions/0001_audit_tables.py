"""Audit tables: flow_run_history and task_execution_audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "flow_run_history",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("flow_id", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.String(200)),
        sa.Column("user_id", sa.String(200)),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("input_data", Json),
        sa.Column("output_data", Json),
        sa.Column("execution_context", Json),
        sa.Column("error_message", sa.Text),
        sa.Column("failed_step", sa.String(200)),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("completed_at", Stamp),
    )
    op.create_index("ix_flow_run_history_flow_created", "flow_run_history", ["flow_id", "created_at"])
    op.create_index("ix_flow_run_history_status_created", "flow_run_history", ["status", "created_at"])
    op.create_index("ix_flow_run_history_created", "flow_run_history", ["created_at"])
    op.create_table(
        "task_execution_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("handler", sa.String(200)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("execution_mode", sa.String(16)),
        sa.Column("queue", sa.String(64)),
        sa.Column("worker_id", sa.String(200)),
        sa.Column("tenant_id", sa.String(200)),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("input_data", Json),
        sa.Column("output_data", Json),
        sa.Column("output_truncated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error_message", sa.Text),
        sa.Column("error_type", sa.String(200)),
        sa.Column("execution_time_ms", sa.Float),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("completed_at", Stamp),
        sa.Column("expires_at", Stamp),
        sa.UniqueConstraint("run_id", "step_id", "attempt", "task_id",
                            name="uq_task_execution_audit_attempt"),
    )
    op.create_index("ix_task_execution_audit_run", "task_execution_audit", ["run_id", "step_id"])
    op.create_index("ix_task_execution_audit_status_expires", "task_execution_audit",
                    ["status", "expires_at"])


def downgrade() -> None:
    op.drop_table("task_execution_audit")
    op.drop_table("flow_run_history")
