"""paid tasks (x402): one payment per signed authorization, what settling it later needs

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("agent_name", sa.String(length=64)),
    ("nonce", sa.String(length=80)),
    ("message_sha256", sa.String(length=64)),
    ("authorization_sha256", sa.String(length=64)),
    ("payload", sa.JSON()),
    ("requirements", sa.JSON()),
    ("next_settle_at", sa.DateTime(timezone=True)),
    ("last_error", sa.Text()),
    ("read_token_hash", sa.String(length=64)),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("payments", sa.Column(name, kind, nullable=True))
    op.add_column(
        "payments",
        sa.Column("settle_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_unique_constraint("one_payment_per_authorization", "payments", ["payer", "nonce"])
    op.create_index(
        "ix_payments_unsettled",
        "payments",
        ["next_settle_at"],
        postgresql_where=sa.text("status = 'verified'"),
    )


def downgrade() -> None:
    op.drop_index("ix_payments_unsettled", table_name="payments")
    op.drop_constraint("one_payment_per_authorization", "payments", type_="unique")
    op.drop_column("payments", "settle_attempts")
    for name, _ in reversed(_COLUMNS):
        op.drop_column("payments", name)
