"""SQLAlchemy 2 typed models: PostgreSQL holds the truth."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.states import ExecutionStatus

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

#: Agent defaults, for a spec that leaves these out.
DEFAULT_MAX_PARALLEL_TASKS = 3
DEFAULT_TIMEOUT_SECONDS = 900
DEFAULT_QUEUE_LIMIT = 100


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A URL-safe, time-ordered id: 48 bits of milliseconds then 80 random bits, base32."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


def id_time_us(execution_id: str) -> int:
    """The submission time (us) an id made by `new_id` carries; 0 for any other id."""
    try:
        n = 0
        for char in execution_id:
            n = n * 32 + _CROCKFORD.index(char)
    except ValueError:
        return 0
    return (n >> 80) * 1000 if len(execution_id) == 26 else 0


class Base(DeclarativeBase):
    """Declarative base for all agx tables."""

    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Agent(Base):
    """A named program that takes a message and writes a transcript."""

    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    command: Mapped[list[str]] = mapped_column(JSON)
    output: Mapped[str] = mapped_column(String(32), default="claude-stream-json")
    default_model: Mapped[str | None] = mapped_column(String(128))
    max_parallel_tasks: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_PARALLEL_TASKS)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_TIMEOUT_SECONDS)
    queue_limit: Mapped[int] = mapped_column(Integer, default=DEFAULT_QUEUE_LIMIT)
    workdir: Mapped[str | None] = mapped_column(Text)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    price: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    description: Mapped[str | None] = mapped_column(Text)
    #: Give its runs agx itself as an MCP server (Claude-shaped agents: `--mcp-config`).
    mcp: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Execution(Base):
    """One run of a task on an agent."""

    __tablename__ = "executions"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','running','completed','failed','cancelled')", name="status_valid"
        ),
        CheckConstraint(
            "triggered_by IN ('manual','schedule','mcp','chat','paid')", name="trigger_valid"
        ),
        # Partial where a column is mostly NULL or only a few rows qualify: every status
        # change writes each index that applies to the row (migration 0003).
        Index(
            "one_fire_per_due_time",
            "schedule_id",
            "scheduled_for",
            unique=True,
            postgresql_where=text("schedule_id IS NOT NULL"),
        ),
        Index("ix_executions_created", "created_at", "id"),
        Index("ix_executions_agent_created", "agent_name", "created_at", "id"),
        Index("ix_executions_status_created", "status", "created_at"),
        Index("ix_executions_trigger_created", "triggered_by", "created_at"),
        Index(
            "ix_executions_in_flight",
            "agent_name",
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index(
            "ix_executions_parent_execution_id",
            "parent_execution_id",
            postgresql_where=text("parent_execution_id IS NOT NULL"),
        ),
        # Migration 0006: execution tokens, conversations, chat turns held for the previous one.
        Index(
            "ix_executions_token_hash",
            "token_hash",
            unique=True,
            postgresql_where=text("token_hash IS NOT NULL"),
        ),
        Index(
            "ix_executions_chat_session",
            "agent_name",
            "chat_session_id",
            "created_at",
            postgresql_where=text("chat_session_id IS NOT NULL"),
        ),
        Index(
            "ix_executions_claude_session",
            "claude_session_id",
            postgresql_where=text("claude_session_id IS NOT NULL"),
        ),
        Index("ix_executions_held_for", "held_for", postgresql_where=text("held_for IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    agent_name: Mapped[str] = mapped_column(ForeignKey("agents.name", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=ExecutionStatus.pending.value)
    triggered_by: Mapped[str] = mapped_column(String(16), default="manual")
    message: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(128))
    model_used: Mapped[str | None] = mapped_column(String(128))
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(18, 8))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    num_turns: Mapped[int | None] = mapped_column(Integer)
    claude_session_id: Mapped[str | None] = mapped_column(String(128))
    resume_session_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column()
    queued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    schedule_id: Mapped[str | None] = mapped_column(String(32))
    scheduled_for: Mapped[datetime | None] = mapped_column()
    parent_execution_id: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    cancel_requested_at: Mapped[datetime | None] = mapped_column()
    exit_code: Mapped[int | None] = mapped_column(Integer)
    #: The API key that submitted it (an execution token acts for that key; none: no key).
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    #: SHA-256 of the execution token of the current attempt (valid while it runs).
    token_hash: Mapped[str | None] = mapped_column(String(64))
    #: The conversation (Claude session id) a chat turn belongs to.
    chat_session_id: Mapped[str | None] = mapped_column(String(128))
    #: A chat turn waits, unqueued, until this execution (the previous turn) has ended.
    held_for: Mapped[str | None] = mapped_column(String(32))


class Transcript(Base):
    """The full stdout of an execution, one row per execution, never silently truncated."""

    __tablename__ = "transcripts"

    execution_id: Mapped[str] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    content: Mapped[str] = mapped_column(Text, default="")
    line_count: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)


class Schedule(Base):
    """A cron schedule that submits executions of an agent."""

    __tablename__ = "schedules"
    __table_args__ = (CheckConstraint("overlap IN ('skip','queue','allow')", name="overlap_valid"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    agent_name: Mapped[str] = mapped_column(
        ForeignKey("agents.name", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    message: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    overlap: Mapped[str] = mapped_column(String(8), default="skip")
    misfire_grace_seconds: Mapped[int] = mapped_column(Integer, default=300)
    next_run_at: Mapped[datetime | None] = mapped_column()
    last_run_at: Mapped[datetime | None] = mapped_column()
    created_from_execution_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Payment(Base):
    """An x402 payment: one per signed authorization (payer, nonce), which is its idempotency
    key; verified before its run, settled only when the run completed, else voided."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("status IN ('verified','settled','voided')", name="payment_status_valid"),
        UniqueConstraint("payer", "nonce", name="one_payment_per_authorization"),
        # The reaper's look-up of payments still to settle or void (migration 0007).
        Index(
            "ix_payments_unsettled",
            "next_settle_at",
            postgresql_where=text("status = 'verified'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True, default=new_id)
    execution_id: Mapped[str | None] = mapped_column(String(32), index=True)
    payer: Mapped[str | None] = mapped_column(String(200))
    amount: Mapped[Decimal] = mapped_column(Numeric(38, 0))
    asset: Mapped[str] = mapped_column(String(200))
    network: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="verified")
    settled_at: Mapped[datetime | None] = mapped_column()
    tx: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    agent_name: Mapped[str | None] = mapped_column(String(64))
    #: the authorization's nonce (lower-case): with the payer, unique
    nonce: Mapped[str | None] = mapped_column(String(80))
    #: SHA-256 of the message paid for: the same payment with another message is a conflict
    message_sha256: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 of the signed authorization and signature, so a repeat must be the same one
    authorization_sha256: Mapped[str | None] = mapped_column(String(64))
    #: the x402 payment payload and the requirements it was verified against (to settle later)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requirements: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    settle_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: a settlement the facilitator did not answer is tried again from then on (backoff)
    next_settle_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    #: SHA-256 of the read token that opens this payment's execution result, and nothing else
    read_token_hash: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    """A bearer API key, stored as a SHA-256 hash; `agent` keys see only their agents."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("role IN ('admin','agent')", name="role_valid"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8), default="admin")
    agents: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BrowserSession(Base):
    """A signed-in browser: the SHA-256 of its random cookie token, ended by sign-out or expiry."""

    __tablename__ = "browser_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Its key's current role and scope apply on every request; deleting the key ends it.
    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class ScheduleFire(Base):
    """One due time of a schedule and what became of it; the unique key admits one record."""

    __tablename__ = "schedule_fires"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('claimed','waiting','submitted','skipped','missed','failed')",
            name="fire_outcome_valid",
        ),
        UniqueConstraint("schedule_id", "scheduled_for", name="one_record_per_due_time"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_for: Mapped[datetime] = mapped_column()
    #: claimed (being submitted) | waiting (overlap: queue) | submitted | skipped | missed | failed
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    execution_id: Mapped[str | None] = mapped_column(String(32))
    scheduler_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# Claims left behind by a scheduler that died are found by this small partial index.
Index(
    "ix_schedule_fires_claimed",
    ScheduleFire.updated_at,
    postgresql_where=ScheduleFire.outcome == "claimed",
)
# Fires held back by overlap `queue` until their schedule's previous run ends.
Index(
    "ix_schedule_fires_waiting",
    ScheduleFire.schedule_id,
    postgresql_where=ScheduleFire.outcome == "waiting",
)
