"""Compare-and-set writes on execution rows: the only way a worker changes a status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from shared.models import Execution, Transcript, utcnow
from shared.states import ExecutionStatus
from shared.stopping import STOPPED_ERROR


def claim(session: Session, execution_id: str, worker_id: str) -> int | None:
    """CAS pending -> running, bumping the fencing token; returns the new attempt or None."""
    now = utcnow()
    return session.execute(
        update(Execution)
        .where(Execution.id == execution_id, Execution.status == ExecutionStatus.pending.value)
        .values(
            status=ExecutionStatus.running.value,
            attempt=Execution.attempt + 1,
            started_at=now,
            heartbeat_at=now,
            worker_id=worker_id,
        )
        .returning(Execution.attempt)
    ).scalar_one_or_none()


def finish(
    session: Session,
    execution_id: str,
    attempt: int,
    status: ExecutionStatus,
    fields: dict[str, Any],
    transcript: Transcript | None = None,
) -> Any:
    """CAS running(attempt) -> terminal; returns (status, error) as written, None if moved on."""
    assert status.terminal
    # A stop accepted before this write wins over whatever the run produced (invariant 2).
    stopped = Execution.cancel_requested_at.is_not(None)
    fields = {**fields, "error": case((stopped, STOPPED_ERROR), else_=fields.get("error"))}
    done = session.execute(
        update(Execution)
        .where(
            Execution.id == execution_id,
            Execution.status == ExecutionStatus.running.value,
            Execution.attempt == attempt,
        )
        .values(
            status=case((stopped, ExecutionStatus.cancelled.value), else_=status.value),
            completed_at=utcnow(),
            **fields,
        )
        .returning(Execution.status, Execution.error)
    ).one_or_none()
    if done is not None and transcript is not None:
        session.add(transcript)  # first and only write: a stale worker never gets here
    return done


def heartbeat(session: Session, execution_id: str, attempt: int) -> tuple[bool, bool]:
    """Record liveness; returns (still ours, stop requested)."""
    row = session.execute(
        update(Execution)
        .where(
            Execution.id == execution_id,
            Execution.attempt == attempt,
            Execution.status == ExecutionStatus.running.value,
        )
        .values(heartbeat_at=utcnow())
        .returning(Execution.cancel_requested_at)
    ).one_or_none()
    if row is None:
        return False, True
    return True, row[0] is not None


def mark_queued(session: Session, execution_id: str) -> None:
    """Stamp queued_at the first time an execution is parked in its agent's waiting list."""
    session.execute(
        update(Execution)
        .where(
            Execution.id == execution_id,
            Execution.status == ExecutionStatus.pending.value,
            Execution.queued_at.is_(None),
        )
        .values(queued_at=utcnow())
    )
