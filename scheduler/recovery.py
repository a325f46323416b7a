"""Settling claims whose scheduler stopped between claiming a due time and submitting it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from scheduler.fire import Claim, Settled, execution_of, settle, submit_claim
from shared.models import Schedule, ScheduleFire
from shared.services import Services
from shared.states import FireOutcome
from shared.store import schedules

log = logging.getLogger(__name__)

CLAIM_STALE_SECONDS = 30.0  #: a claim unsettled this long: its scheduler died mid-submit
BATCH = 100  #: claims looked at per sweep


def recover_stale_claims(
    services: Services, now: datetime, scheduler_id: str, stale_seconds: float = CLAIM_STALE_SECONDS
) -> int:
    """Settle claims left unsettled for `stale_seconds`; returns how many were taken over."""
    with services.Session.begin() as session:
        older_than = now - timedelta(seconds=stale_seconds)
        rows = schedules.lock_stale_claims(session, older_than, BATCH)
        schedules.take_over([fire for fire, _ in rows], scheduler_id)
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
