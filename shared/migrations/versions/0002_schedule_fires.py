"""schedule fires: one record per (schedule, due time)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_fires",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("schedule_id", sa.String(length=32), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("execution_id", sa.String(length=32), nullable=True),
        sa.Column("scheduler_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('claimed','submitted','skipped','missed','failed')",
            name="fire_outcome_valid",
        ),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "scheduled_for", name="one_record_per_due_time"),
    )
    op.create_index(
        "ix_schedule_fires_claimed",
        "schedule_fires",
        ["updated_at"],
        postgresql_where=sa.text("outcome = 'claimed'"),
    )


def downgrade() -> None:
    op.drop_index("ix_schedule_fires_claimed", table_name="schedule_fires")
    op.drop_table("schedule_fires")
