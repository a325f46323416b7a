"""queued fires: overlap `queue` holds a fire as `waiting` until the previous run ends

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fire_outcome_valid", "schedule_fires", type_="check")
    op.create_check_constraint(
        "fire_outcome_valid",
        "schedule_fires",
        "outcome IN ('claimed','waiting','submitted','skipped','missed','failed')",
    )
    op.create_index(
        "ix_schedule_fires_waiting",
        "schedule_fires",
        ["schedule_id"],
        postgresql_where=sa.text("outcome = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index("ix_schedule_fires_waiting", table_name="schedule_fires")
    op.execute(
        "UPDATE schedule_fires SET outcome = 'skipped',"
        " reason = 'dropped while waiting: migration 0004 was downgraded'"
        " WHERE outcome = 'waiting'"
    )
    op.drop_constraint("fire_outcome_valid", "schedule_fires", type_="check")
    op.create_check_constraint(
        "fire_outcome_valid",
        "schedule_fires",
        "outcome IN ('claimed','submitted','skipped','missed','failed')",
    )
