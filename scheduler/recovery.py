"""Settling claims whose scheduler stopped between claiming a due time and submitting it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from scheduler.fire import Claim, Settled, execution_of, settle, submit_claim
from shared.models import Schedule, ScheduleFire, utcnow
from shared.services import Services
from shared.states import FireOutcome

log = logging.getLogger(__name__)

CLAIM_STALE_SECONDS = 30.0  #: a claim unsettled this long: its scheduler died mid-submit
BATCH = 100  #: claims looked at per sweep


def recover_stale_claims(
    services: Services, now: datetime, scheduler_id: str, stale_seconds: float = CLAIM_STALE_SECONDS
) -> int:
    """Settle claims left unsettled for `stale_seconds`; returns how many were taken over."""
    with services.Session.begin() as session:
        rows = session.execute(
            select(ScheduleFire, Schedule)
            .join(Schedule, Schedule.id == ScheduleFire.schedule_id)
            .where(
                ScheduleFire.outcome == FireOutcome.claimed.value,
                ScheduleFire.updated_at < now - timedelta(seconds=stale_seconds),
            )
            .order_by(ScheduleFire.updated_at)
            .limit(BATCH)
            .with_for_update(of=ScheduleFire, skip_locked=True)
        ).all()
        for fire, _ in rows:  # taken over: other schedulers leave it alone from now on
            fire.scheduler_id, fire.updated_at = scheduler_id, utcnow()
    for fire, schedule in rows:
        _recover(services, fire, schedule, now)
    return len(rows)


def _recover(services: Services, fire: ScheduleFire, schedule: Schedule, now: datetime) -> None:
    claim = Claim(
        fire.id,
        schedule.id,
        schedule.agent_name,
        schedule.message,
        schedule.model,
        fire.scheduled_for,
    )
    log.warning(
        "schedule %s at %s: settling a claim left by %s",
        schedule.id,
        fire.scheduled_for,
        fire.scheduler_id,
    )
    existing = execution_of(services, claim)
    if existing is not None:  # it died after submitting, before recording so
        settle(services, [Settled(claim, FireOutcome.submitted, None, existing)])
    elif not schedule.enabled:
        settle(
            services,
            [
                Settled(
                    claim,
                    FireOutcome.skipped,
                    "the schedule was paused before the claim was submitted",
                )
            ],
        )
    elif (now - claim.due).total_seconds() > schedule.misfire_grace_seconds:
        settle(
            services,
            [
                Settled(
                    claim,
                    FireOutcome.missed,
                    "the scheduler that claimed it "
                    "stopped before submitting; now beyond misfire_grace_seconds",
                )
            ],
        )
    else:
        settle(services, [s for s in [submit_claim(services, claim)] if s is not None])
