"""Firing schedules: the database admits one record per due time, then the claimer submits.

Every scheduler process fires every schedule at its fire times. Under row locks on the
schedules it plans what is due against each marker (`scheduler.plan`), records missed and
skipped due times, claims the ones to run and moves the markers on, all in one short
transaction; a process that comes second finds the markers ahead and does nothing. The
claim commits before the submission, so a crash in between leaves a `claimed` record
that `scheduler.recovery` settles; the executions table's unique (schedule_id,
scheduled_for) makes a second execution impossible either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from producer import submit_execution
from scheduler.plan import Plan, overlap_decision, plan
from shared import metrics
from shared.errors import AlreadyFired, InvalidField, NotFound, QueueFull
from shared.models import utcnow
from shared.services import Services
from shared.states import FireOutcome, Overlap, Trigger
from shared.store import executions
from shared.store.schedules import (
    Record,
    claim_waiting,
    existing,
    finish,
    in_flight,
    lock_schedules,
    ready_to_release,
    record,
    relax_durability,
    set_last_run,
    set_next_runs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A due time this process won: what to submit for it."""

    fire_id: int
    schedule_id: str
    agent_name: str
    message: str
    model: str | None
    due: datetime


@dataclass(frozen=True)
class Settled:
    """How a claim ended: its outcome, why, and the execution it made."""

    claim: Claim
    outcome: FireOutcome
    reason: str | None = None
    execution_id: str | None = None


@dataclass
class Fired:
    """What one round of firing did."""

    outcomes: dict[str, FireOutcome] = field(default_factory=dict)
    locked: list[str] = field(default_factory=list)  #: rows another transaction held


def fire_batch(
    services: Services,
    schedule_ids: Sequence[str],
    now: datetime,
    scheduler_id: str,
    allow_seconds: bool = False,
    skip_locked: bool = False,
) -> Fired:
    """Handle what is due for these schedules up to `now`, in one claim transaction."""
    fired = Fired()
    with services.Session.begin() as session:
        relax_durability(session)
        rows = lock_schedules(session, schedule_ids, skip_locked)
        if skip_locked and len(rows) < len(schedule_ids):
            seen = {row.id for row in rows}
            fired.locked = sorted(existing(session, [i for i in schedule_ids if i not in seen]))
        plans = [p for p in (plan(row, now, allow_seconds) for row in rows) if p is not None]
        claims = _claim(session, plans, scheduler_id, fired)
    settled = [s for s in (submit_claim(services, c) for c in claims) if s is not None]
    settle(services, settled)
    fired.outcomes.update({s.claim.schedule_id: s.outcome for s in settled})
    return fired


def _claim(session: Session, plans: list[Plan], scheduler_id: str, fired: Fired) -> list[Claim]:
    """Write markers and records; the due times this process won and must submit."""
    set_next_runs(session, {p.schedule.id: p.next_run_at for p in plans})
    checked = [p.schedule.id for p in plans if p.due and p.schedule.overlap != Overlap.allow]
    busy = in_flight(session, checked) if checked else {}
    per_plan: list[tuple[Plan, list[Record]]] = []
    for p in plans:
        records = list(p.missed)
        if p.due is not None:
            held = overlap_decision(p.schedule.overlap, busy.get(p.schedule.id, []))
            records.append(Record(p.due, *held) if held else Record(p.due, FireOutcome.claimed))
        per_plan.append((p, records))
    inserted = record(session, scheduler_id, [(p.schedule.id, r) for p, rs in per_plan for r in rs])
    for p, records in per_plan:
        for r in records:
            if (
                r.outcome is not FireOutcome.claimed
                and (p.schedule.id, r.scheduled_for) in inserted
            ):
                metrics.FIRES.labels(r.outcome.value).inc()
    claims = []
    for p, records in per_plan:
        if not records:  # nothing was due: only the marker moved
            continue
        last = records[-1]
        fire_id = inserted.get((p.schedule.id, last.scheduled_for))
        if fire_id is None:
            log.debug("schedule %s: due time already handled by another scheduler", p.schedule.id)
        elif last.outcome is FireOutcome.claimed:
            claims.append(
                Claim(
                    fire_id,
                    p.schedule.id,
                    p.schedule.agent_name,
                    p.schedule.message,
                    p.schedule.model,
                    last.scheduled_for,
                )
            )
        else:
            fired.outcomes[p.schedule.id] = last.outcome
            log.info(
                "schedule %s at %s %s: %s",
                p.schedule.id,
                last.scheduled_for.isoformat(),
                last.outcome,
                last.reason,
            )
    return claims


def _count_recorded(per_plan: list[tuple[Plan, list[Record]]], inserted: dict[Any, Any]) -> None:
    """Count the due times this scheduler recorded as settled already (missed, skipped...)."""
    for p, records in per_plan:
        for r in records:
            key = (p.schedule.id, r.scheduled_for)
            if r.outcome is not FireOutcome.claimed and key in inserted:
                metrics.FIRES.labels(r.outcome.value).inc()


def release_waiting(services: Services, scheduler_id: str, limit: int = 100) -> int:
    """Submit fires held back by overlap `queue` whose schedule's previous run has ended.

    Under the schedule's row lock (as `fire_batch` holds it while deciding), a waiting fire
    becomes this scheduler's claim and is submitted like any other; several schedulers may
    run this at once. A fire of a schedule paused meanwhile is recorded skipped. Returns how
    many fires were settled.
    """
    with services.Session.begin() as session:
        relax_durability(session)
        candidates = ready_to_release(session, limit)
        if not candidates:
            return 0
        rows = lock_schedules(session, sorted({s for _, s, _ in candidates}), skip_locked=True)
        schedules = {row.id: row for row in rows}
        ready = ready_to_release(session, limit, list(schedules))  # again, under the locks
        claim_waiting(session, [fire_id for fire_id, _, _ in ready], scheduler_id)
    claims = [
        Claim(
            fire_id,
            schedule_id,
            schedules[schedule_id].agent_name,
            schedules[schedule_id].message,
            schedules[schedule_id].model,
            due,
        )
        for fire_id, schedule_id, due in ready
    ]
    settled = [
        s
        for s in (
            submit_claim(services, c)
            if schedules[c.schedule_id].enabled
            else Settled(c, FireOutcome.skipped, "the schedule was paused while the fire waited")
            for c in claims
        )
        if s is not None
    ]
    settle(services, settled)
    return len(settled)


def submit_claim(services: Services, claim: Claim) -> Settled | None:
    """Submit a claimed due time; None (left claimed, for recovery) when that broke midway."""
    try:
        submitted = submit_execution(
            services,
            claim.agent_name,
            claim.message,
            model=claim.model,
            triggered_by=Trigger.schedule,
            source=f"schedule:{claim.schedule_id}",
            schedule_id=claim.schedule_id,
            scheduled_for=claim.due,
        )
    except QueueFull as exc:
        return Settled(claim, FireOutcome.skipped, exc.message)
    except (NotFound, InvalidField) as exc:
        return Settled(claim, FireOutcome.failed, exc.message)
    except AlreadyFired:  # a recovery submitted it already
        return Settled(claim, FireOutcome.submitted, None, execution_of(services, claim))
    except Exception:  # database or Redis away: the claim stays, recovery settles it
        log.exception("schedule %s at %s: submission failed", claim.schedule_id, claim.due)
        return None
    return Settled(claim, FireOutcome.submitted, None, submitted.execution.id)


def execution_of(services: Services, claim: Claim) -> str | None:
    """The execution already made for a claim's due time, if any."""
    with services.Session() as session:
        return executions.of_due_time(session, claim.schedule_id, claim.due)


def settle(services: Services, settled: Sequence[Settled]) -> None:
    """Record how claims ended, and move last_run_at of those submitted."""
    if not settled:
        return
    with services.Session.begin() as session:
        relax_durability(session)
        # Schedules before their fires: the order a schedule's deletion locks them in (it
        # cascades to its fires), so the two cannot deadlock.
        set_last_run(
            session,
            [s.claim.schedule_id for s in settled if s.outcome is FireOutcome.submitted],
            utcnow(),
        )
        finish(session, [(s.claim.fire_id, s.outcome, s.reason, s.execution_id) for s in settled])
    now = utcnow()
    for s in settled:
        metrics.FIRES.labels(s.outcome.value).inc()
        if s.outcome is FireOutcome.submitted:
            metrics.LAG.observe(max((now - s.claim.due).total_seconds(), 0.0))
        log.info(
            "schedule %s at %s %s: %s",
            s.claim.schedule_id,
            s.claim.due.isoformat(),
            s.outcome,
            s.execution_id or s.reason,
        )
