"""lean execution indexes: in-flight and sparse columns get partial indexes

Every status change of an execution is a non-HOT update that writes an entry into each
index on the table, so each index costs on every submit, claim and finish.

* The in-flight count behind `queue_limit` (run on every submit) read the agent's whole
  history through (agent_name, status); a partial index holds only pending/running rows.
* schedule_id and parent_execution_id are NULL for most executions: index them only where
  set. The one-fire-per-due-time rule becomes a partial unique index, which also serves
  lookups by schedule_id.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IN_FLIGHT = sa.text("status IN ('pending', 'running')")


def upgrade() -> None:
    op.drop_index("ix_executions_agent_status", table_name="executions")
    op.create_index(
        "ix_executions_in_flight", "executions", ["agent_name"], postgresql_where=IN_FLIGHT
    )
    op.drop_index("ix_executions_schedule_id", table_name="executions")
    op.drop_constraint("one_fire_per_due_time", "executions", type_="unique")
    op.create_index(
        "one_fire_per_due_time",
        "executions",
        ["schedule_id", "scheduled_for"],
        unique=True,
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )
    op.drop_index("ix_executions_parent_execution_id", table_name="executions")
    op.create_index(
        "ix_executions_parent_execution_id",
        "executions",
        ["parent_execution_id"],
        postgresql_where=sa.text("parent_execution_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_parent_execution_id", table_name="executions")
    op.create_index("ix_executions_parent_execution_id", "executions", ["parent_execution_id"])
    op.drop_index("one_fire_per_due_time", table_name="executions")
    op.create_unique_constraint(
        "one_fire_per_due_time", "executions", ["schedule_id", "scheduled_for"]
    )
    op.create_index("ix_executions_schedule_id", "executions", ["schedule_id"])
    op.drop_index("ix_executions_in_flight", table_name="executions")
    op.create_index("ix_executions_agent_status", "executions", ["agent_name", "status"])
