"""Compare-and-set writes on execution rows: the only way a worker changes a status.

Plain SQL, parsed once: these run for every execution, and the ORM's statement building
cost more CPU than the rest of the worker's bookkeeping together (measured with py-spy).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, text
from sqlalchemy.orm import Session

from shared.models import Transcript, utcnow
from shared.states import ExecutionStatus
from shared.stopping import STOPPED_ERROR

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

_CLAIM_RETURNING = text(
    "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = :now,"
    " heartbeat_at = :now, worker_id = :worker"
    " WHERE id = :id AND agent_name = :agent AND status = 'pending'"
    " RETURNING attempt, message, model, resume_session_id, timeout_seconds, created_at"
)
_CLAIM = text(
    "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = :now,"
    " heartbeat_at = :now, worker_id = :worker"
    " WHERE id = :id AND status = 'pending' RETURNING attempt"
)
# A stop accepted before this write wins over whatever the run produced (invariant 2).
_FINISH_SQL = (
    "UPDATE executions SET"
    " status = CASE WHEN cancel_requested_at IS NULL THEN :status ELSE 'cancelled' END,"
    " error = CASE WHEN cancel_requested_at IS NULL THEN :error ELSE :stopped END,"
    " completed_at = :now, "
    + ", ".join(f"{name} = :{name}" for name in OUTCOME_FIELDS if name != "error")
    + " WHERE id = :id AND status = 'running' AND attempt = :attempt"
    " RETURNING id, status, error"
)
_FINISH = text(_FINISH_SQL)
# The transcript goes in with the terminal write, in one round trip, and only if it won.
_FINISH_WITH_TRANSCRIPT = text(
    f"WITH done AS ({_FINISH_SQL}),"
    " saved AS (INSERT INTO transcripts (execution_id, content, line_count, truncated)"
    " SELECT id, :content, :line_count, :truncated FROM done)"
    " SELECT id, status, error FROM done"
)
_HEARTBEAT = text(
    "UPDATE executions SET heartbeat_at = :now"
    " WHERE id = :id AND attempt = :attempt AND status = 'running'"
    " RETURNING cancel_requested_at"
)
_QUEUED = text(
    "UPDATE executions SET queued_at = :now"
    " WHERE id = :id AND status = 'pending' AND queued_at IS NULL"
)


def claim(session: Session | Connection, execution_id: str, worker_id: str) -> int | None:
    """CAS pending -> running, bumping the fencing token; returns the new attempt or None."""
    params = {"id": execution_id, "now": utcnow(), "worker": worker_id}
    return session.execute(_CLAIM, params).scalar_one_or_none()


def claim_returning(
    session: Session | Connection, execution_id: str, agent: str, worker_id: str
) -> Row[Any] | None:
    """`claim`, also returning what the run needs (attempt, message, model, ...), or None."""
    params = {"id": execution_id, "agent": agent, "now": utcnow(), "worker": worker_id}
    return session.execute(_CLAIM_RETURNING, params).one_or_none()


def finish(
    session: Session | Connection,
    execution_id: str,
    attempt: int,
    status: ExecutionStatus,
    fields: dict[str, Any],
    transcript: Transcript | None = None,
) -> Row[Any] | None:
    """CAS running(attempt) -> terminal; returns (id, status, error) as written, or None."""
    assert status.terminal
    params = {name: fields.get(name) for name in OUTCOME_FIELDS}
    params.update(
        id=execution_id, attempt=attempt, status=status.value, now=utcnow(), stopped=STOPPED_ERROR
    )
    if transcript is None:
        return session.execute(_FINISH, params).one_or_none()
    params.update(
        content=transcript.content,
        line_count=transcript.line_count,
        truncated=bool(transcript.truncated),
    )
    return session.execute(_FINISH_WITH_TRANSCRIPT, params).one_or_none()


def heartbeat(session: Session | Connection, execution_id: str, attempt: int) -> tuple[bool, bool]:
    """Record liveness; returns (still ours, stop requested)."""
    row = session.execute(
        _HEARTBEAT, {"id": execution_id, "attempt": attempt, "now": utcnow()}
    ).one_or_none()
    if row is None:
        return False, True
    return True, row[0] is not None


def mark_queued(session: Session | Connection, execution_id: str) -> None:
    """Stamp queued_at the first time an execution is parked in its agent's waiting list."""
    session.execute(_QUEUED, {"id": execution_id, "now": utcnow()})
