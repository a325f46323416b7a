"""browser sessions: sign-in cookies are random tokens, stored hashed and revocable

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_browser_sessions_api_key_id"), "browser_sessions", ["api_key_id"], unique=False
    )


def downgrade() -> None:
    # Signed-in browsers sign in again; before 0005 a cookie held the key's hash instead.
    op.drop_index(op.f("ix_browser_sessions_api_key_id"), table_name="browser_sessions")
    op.drop_table("browser_sessions")
