"""The schedules table and their history in `schedule_fires` (one row per due time, written at
most once): the scheduler's and the API's reads and writes, on SQLAlchemy Core and ORM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, cast, delete, func, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.models import Execution, Schedule, ScheduleFire, utcnow
from shared.states import IN_FLIGHT, FireOutcome

_SCHEDULES = Schedule.metadata.tables["schedules"]
_FIRES = ScheduleFire.metadata.tables["schedule_fires"]


@dataclass(frozen=True)
class Record:
    """A due time to write down: its outcome and why."""

    scheduled_for: datetime
    outcome: FireOutcome
    reason: str | None = None


def relax_durability(session: Session) -> None:
    """Let this transaction commit without waiting for its WAL flush to disk.

    Safe for claims and outcomes: if PostgreSQL itself crashes and loses the last of them,
    the due time is claimed again, and the executions table's unique (schedule_id,
    scheduled_for), written by a durable commit, still refuses a second execution.
    """
    session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def lock_schedules(session: Session, ids: Sequence[str], skip_locked: bool) -> list[Any]:
    """Lock the rows of these schedules (in id order, so lockers never deadlock) and read them."""
    t = _SCHEDULES
    return list(
        session.execute(
            select(
                t.c.id,
                t.c.agent_name,
                t.c.cron,
                t.c.timezone,
                t.c.message,
                t.c.model,
                t.c.enabled,
                t.c.overlap,
                t.c.misfire_grace_seconds,
                t.c.next_run_at,
            )
            .where(t.c.id.in_(ids))
            .order_by(t.c.id)
            .with_for_update(skip_locked=skip_locked)
        )
    )


def existing(session: Session, ids: Sequence[str]) -> set[str]:
    """Which of these schedules exist (without waiting for their locks)."""
    return set(session.scalars(select(_SCHEDULES.c.id).where(_SCHEDULES.c.id.in_(ids))))


def in_flight(session: Session, ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Per schedule: (id, status) of its pending/running runs, and (fire id, outcome) of its
    fires being submitted ("claimed") or held back by overlap `queue` ("waiting")."""
    e, f = Execution.metadata.tables["executions"], _FIRES
    rows = session.execute(
        union_all(
            select(e.c.schedule_id, e.c.id, e.c.status).where(
                e.c.schedule_id.in_(ids), e.c.status.in_(IN_FLIGHT)
            ),
            select(f.c.schedule_id, cast(f.c.id, String), f.c.outcome).where(
                f.c.schedule_id.in_(ids),
                f.c.outcome.in_((FireOutcome.claimed.value, FireOutcome.waiting.value)),
            ),
        )
    )
    found: dict[str, list[tuple[str, str]]] = {}
    for schedule_id, item, status in rows:
        found.setdefault(schedule_id, []).append((item, status))
    return found


def record(
    session: Session, scheduler_id: str, records: Sequence[tuple[str, Record]]
) -> dict[tuple[str, datetime], int]:
    """Insert records whose due time has none yet; ids of those inserted by (schedule, time)."""
    if not records:
        return {}
    now = utcnow()
    stmt = (
        insert(_FIRES)
        .values(
            [
                {
                    "schedule_id": schedule_id,
                    "scheduled_for": r.scheduled_for,
                    "outcome": r.outcome.value,
                    "reason": r.reason,
                    "scheduler_id": scheduler_id,
                    "created_at": now,
                    "updated_at": now,
                }
                for schedule_id, r in records
            ]
        )
        .on_conflict_do_nothing(constraint="one_record_per_due_time")
    )
    rows = session.execute(
        stmt.returning(_FIRES.c.schedule_id, _FIRES.c.scheduled_for, _FIRES.c.id)
    )
    return {(schedule_id, when): fire_id for schedule_id, when, fire_id in rows}


def ready_to_release(
    session: Session, limit: int, schedule_ids: Sequence[str] | None = None
) -> list[tuple[int, str, datetime]]:
    """(fire id, schedule id, due time) of waiting fires whose schedule has nothing in flight:
    no pending or running execution, no fire being submitted. Oldest first."""
    e, f = Execution.metadata.tables["executions"], _FIRES
    busy_run = select(e.c.id).where(e.c.schedule_id == f.c.schedule_id, e.c.status.in_(IN_FLIGHT))
    other = _FIRES.alias("other")
    busy_claim = select(other.c.id).where(
        other.c.schedule_id == f.c.schedule_id, other.c.outcome == FireOutcome.claimed.value
    )
    query = (
        select(f.c.id, f.c.schedule_id, f.c.scheduled_for)
        .where(
            f.c.outcome == FireOutcome.waiting.value,
            ~busy_run.exists(),
            ~busy_claim.exists(),
        )
        .order_by(f.c.scheduled_for)
        .limit(limit)
    )
    if schedule_ids is not None:
        query = query.where(f.c.schedule_id.in_(schedule_ids))
    return [(fire_id, schedule_id, due) for fire_id, schedule_id, due in session.execute(query)]


def claim_waiting(session: Session, fire_ids: Sequence[int], scheduler_id: str) -> None:
    """Turn waiting fires into claims of this scheduler (then submitted like any claim)."""
    if not fire_ids:
        return
    f = _FIRES
    session.execute(
        update(f)
        .where(f.c.id.in_(fire_ids), f.c.outcome == FireOutcome.waiting.value)
        .values(outcome=FireOutcome.claimed.value, scheduler_id=scheduler_id, updated_at=utcnow())
    )


def finish(
    session: Session, outcomes: Sequence[tuple[int, FireOutcome, str | None, str | None]]
) -> None:
    """Move claimed records to (outcome, reason, execution id); only from `claimed`."""
    if not outcomes:
        return
    f = _FIRES
    session.execute(
        update(f)
        .where(f.c.id == bindparam("b_id"), f.c.outcome == FireOutcome.claimed.value)
        .values(
            outcome=bindparam("b_outcome"),
            reason=bindparam("b_reason"),
            execution_id=bindparam("b_execution"),
            updated_at=bindparam("b_now"),
        ),
        [
            {
                "b_id": fire_id,
                "b_outcome": outcome.value,
                "b_reason": reason,
                "b_execution": execution_id,
                "b_now": utcnow(),
            }
            for fire_id, outcome, reason, execution_id in outcomes
        ],
    )


def set_next_runs(session: Session, markers: dict[str, datetime | None]) -> None:
    """Store each schedule's marker: the first due time nobody has handled yet."""
    if not markers:
        return
    t = _SCHEDULES
    # updated_at is kept as it is: it signals edits made through the API, not fires.
    session.execute(
        update(t)
        .where(t.c.id == bindparam("b_id"))
        .values(next_run_at=bindparam("b_next"), updated_at=t.c.updated_at),
        [{"b_id": k, "b_next": v} for k, v in markers.items()],
    )


def set_last_run(session: Session, ids: Sequence[str], when: datetime) -> None:
    """Move last_run_at of these schedules forward to `when` (never backward)."""
    if not ids:
        return
    t = _SCHEDULES
    session.execute(
        update(t)
        .where(t.c.id.in_(ids))
        .values(
            last_run_at=func.greatest(func.coalesce(t.c.last_run_at, when), when),
            updated_at=t.c.updated_at,
        )
    )


def recent(
    session: Session,
    schedule_id: str,
    limit: int = 20,
    before: datetime | None = None,
    outcome: str | None = None,
) -> list[ScheduleFire]:
    """Records of a schedule, newest due time first: the latest, or those due before
    `before` (the paging cursor), optionally of one outcome only."""
    query = select(ScheduleFire).where(ScheduleFire.schedule_id == schedule_id)
    if before is not None:
        query = query.where(ScheduleFire.scheduled_for < before)
    if outcome is not None:
        query = query.where(ScheduleFire.outcome == outcome)
    return list(session.scalars(query.order_by(ScheduleFire.scheduled_for.desc()).limit(limit)))


def prune(session: Session, keep_days: float) -> int:
    """Delete settled records older than `keep_days`; returns how many."""
    cutoff = utcnow() - timedelta(days=keep_days)
    result = session.execute(
        delete(ScheduleFire).where(
            ScheduleFire.updated_at < cutoff,
            ScheduleFire.outcome.not_in((FireOutcome.claimed.value, FireOutcome.waiting.value)),
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def enabled_versions(session: Session) -> list[Any]:
    """Every enabled schedule: (id, updated_at, cron, timezone, next_run_at)."""
    t = _SCHEDULES
    query = select(t.c.id, t.c.updated_at, t.c.cron, t.c.timezone, t.c.next_run_at)
    return list(session.execute(query.where(t.c.enabled)).all())


def lock_stale_claims(session: Session, older_than: datetime, limit: int) -> list[Any]:
    """Lock claims unsettled since before `older_than` (skipping locked ones), oldest first:
    (fire, schedule) pairs."""
    query = (
        select(ScheduleFire, Schedule)
        .join(Schedule, Schedule.id == ScheduleFire.schedule_id)
        .where(
            ScheduleFire.outcome == FireOutcome.claimed.value,
            ScheduleFire.updated_at < older_than,
        )
        .order_by(ScheduleFire.updated_at)
        .limit(limit)
        .with_for_update(of=ScheduleFire, skip_locked=True)
    )
    return list(session.execute(query).all())


def take_over(fires: Sequence[ScheduleFire], scheduler_id: str) -> None:
    """Make these locked claims this scheduler's: other schedulers leave them alone from now."""
    for fire in fires:
        fire.scheduler_id, fire.updated_at = scheduler_id, utcnow()


def all_schedules(session: Session, agent: str | None = None) -> list[Schedule]:
    """Every schedule (of one agent only, if named), by agent then age."""
    query = select(Schedule)
    if agent is not None:
        query = query.where(Schedule.agent_name == agent)
    return list(session.scalars(query.order_by(Schedule.agent_name, Schedule.created_at)))


def get(session: Session, schedule_id: str, lock: bool = False) -> Schedule | None:
    """The schedule, or None; locked for update if asked."""
    return session.get(Schedule, schedule_id, with_for_update=lock or None)
