"""chat, MCP and paid triggers: conversations, held turns, execution tokens, agents' mcp flag

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "agents", sa.Column("mcp", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    for name, width in (
        ("api_key_id", 32),
        ("token_hash", 64),
        ("chat_session_id", 128),
        ("held_for", 32),
    ):
        op.add_column("executions", sa.Column(name, sa.String(length=width), nullable=True))
    op.create_index(
        "ix_executions_token_hash",
        "executions",
        ["token_hash"],
        unique=True,
        postgresql_where=sa.text("token_hash IS NOT NULL"),
    )
    op.create_index(
        "ix_executions_chat_session",
        "executions",
        ["agent_name", "chat_session_id", "created_at"],
        postgresql_where=sa.text("chat_session_id IS NOT NULL"),
    )
    op.create_index(
        "ix_executions_claude_session",
        "executions",
        ["claude_session_id"],
        postgresql_where=sa.text("claude_session_id IS NOT NULL"),
    )
    op.create_index(
        "ix_executions_held_for",
        "executions",
        ["held_for"],
        postgresql_where=sa.text("held_for IS NOT NULL"),
    )


def downgrade() -> None:
    for index in (
        "ix_executions_held_for",
        "ix_executions_chat_session",
        "ix_executions_token_hash",
    ):
        op.drop_index(index, table_name="executions")
    for name in ("held_for", "chat_session_id", "token_hash", "api_key_id"):
        op.drop_column("executions", name)
    op.drop_column("agents", "mcp")
