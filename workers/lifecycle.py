"""Compare-and-set writes on execution rows: the only way a worker changes a status.

Plain SQL on the driver's (psycopg) connection, parsed once: these run for every execution,
and building them with the ORM, or even running them through SQLAlchemy Core, cost more
client CPU than the statements themselves (measured: py-spy, and ~90 us per statement for
Core's execute over psycopg's). Each function takes a psycopg connection, or a SQLAlchemy
Session/Connection whose transaction it then joins.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from shared.db import one
from shared.models import utcnow
from shared.states import ExecutionStatus
from shared.stopping import STOPPED_ERROR

Conn = psycopg.Connection[Any] | Session | Connection

#: Outcome columns `finish` writes; any not given are stored as NULL.
OUTCOME_FIELDS = (
    "response",
    "model_used",
    "cost",
    "input_tokens",
    "output_tokens",
    "num_turns",
    "claude_session_id",
    "exit_code",
    "duration_ms",
    "error",
)

_CLAIM_RETURNING = (
    "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = %(now)s,"
    " heartbeat_at = %(now)s, worker_id = %(worker)s"
    " WHERE id = %(id)s AND agent_name = %(agent)s AND status = 'pending'"
    " RETURNING attempt, message, model, resume_session_id, timeout_seconds, created_at"
)
# A stop accepted before this write wins over whatever the run produced (invariant 2,
# docs/architecture.md).
_FINISH = (
    "UPDATE executions SET"
    " status = CASE WHEN cancel_requested_at IS NULL THEN %(status)s ELSE 'cancelled' END,"
    " error = CASE WHEN cancel_requested_at IS NULL THEN %(error)s ELSE %(stopped)s END,"
    " completed_at = %(now)s, "
    + ", ".join(f"{name} = %({name})s" for name in OUTCOME_FIELDS if name != "error")
    + " WHERE id = %(id)s AND status = 'running' AND attempt = %(attempt)s"
    " RETURNING id, status, error, response"
)
# The transcript goes in with the terminal write, in one round trip, and only if it won.
_FINISH_WITH_TRANSCRIPT = (
    f"WITH done AS ({_FINISH}),"
    " saved AS (INSERT INTO transcripts (execution_id, content, line_count, truncated)"
    " SELECT id, %(content)s, %(line_count)s, %(truncated)s FROM done)"
    " SELECT id, status, error, response FROM done"
)
_HEARTBEAT = (
    "UPDATE executions SET heartbeat_at = %(now)s"
    " WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'running'"
    " RETURNING cancel_requested_at"
)
_QUEUED = (
    "UPDATE executions SET queued_at = %(now)s"
    " WHERE id = %(id)s AND status = 'pending' AND queued_at IS NULL"
)


def claim_returning(conn: Conn, execution_id: str, agent: str, worker_id: str) -> Any:
    """CAS pending -> running, bumping the fencing token (attempt); returns what the run needs
    (attempt, message, model, ...), or None when another claim won."""
    params = {"id": execution_id, "agent": agent, "now": utcnow(), "worker": worker_id}
    return one(conn, _CLAIM_RETURNING, params)


def finish(
    conn: Conn,
    execution_id: str,
    attempt: int,
    status: ExecutionStatus,
    fields: dict[str, Any],
    transcript: tuple[str, int, bool] | None = None,
) -> Any:
    """CAS running(attempt) -> terminal, with the transcript (content, line count, truncated)
    if given; returns (id, status, error) as written, or None."""
    assert status.terminal
    params = {name: fields.get(name) for name in OUTCOME_FIELDS}
    params.update(
        id=execution_id, attempt=attempt, status=status.value, now=utcnow(), stopped=STOPPED_ERROR
    )
    if transcript is None:
        return one(conn, _FINISH, params)
    params.update(content=transcript[0], line_count=transcript[1], truncated=transcript[2])
    return one(conn, _FINISH_WITH_TRANSCRIPT, params)


def heartbeat(conn: Conn, execution_id: str, attempt: int) -> tuple[bool, bool]:
    """Record liveness; returns (still ours, stop requested)."""
    row = one(conn, _HEARTBEAT, {"id": execution_id, "attempt": attempt, "now": utcnow()})
    if row is None:
        return False, True
    return True, row[0] is not None


def mark_queued(conn: Conn, execution_id: str) -> None:
    """Stamp queued_at the first time an execution is parked in its agent's waiting list."""
    one(conn, _QUEUED, {"id": execution_id, "now": utcnow()})
