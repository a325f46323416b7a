"""The firing code on the real database, with an injected clock: weekdays, DST, overlap,
misfires, queue_limit, one record per due time, and claims left by a dead scheduler."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from producer import submit_execution
from scheduler import FireOutcome, fire_batch, recover_stale_claims, release_waiting, zone
from shared.errors import AlreadyFired
from shared.models import Execution, Schedule, ScheduleFire, utcnow
from shared.states import IN_FLIGHT, Trigger
from tests.conftest import statuses, wait_for
from tests.helpers import T0, WEEKDAYS, ZONES, history, make_schedule, runs


def fire(services: Any, schedule_id: str, now: datetime) -> FireOutcome | None:
    """What the production path (`fire_batch`, waiting for the row lock) did to this schedule."""
    fired = fire_batch(services, [schedule_id], now, "test-scheduler", allow_seconds=True)
    return fired.outcomes.get(schedule_id)


@pytest.mark.parametrize("tz", ZONES)
def test_the_firing_code_fires_each_weekday_number_and_name_on_that_weekday(
    services, make_agent, tz
):
    make_agent("demo", queue_limit=1000)
    sunday = datetime(2026, 3, 1, tzinfo=zone(tz))
    ids = {
        dow: make_schedule(
            services, cron=f"0 9 * * {dow}", tz=tz, next_run_at=sunday.astimezone(UTC)
        )
        for dow in WEEKDAYS
    }
    for day in range(7):  # the clock visits 09:00:30 local of Sunday ... Saturday
        now = sunday + timedelta(days=day, hours=9, seconds=30)
        for schedule_id in ids.values():
            fire(services, schedule_id, now)
    for dow, schedule_id in ids.items():
        fired = [r.scheduled_for.astimezone(zone(tz)) for r in runs(services, schedule_id)]
        assert [(t.weekday(), t.hour, t.minute) for t in fired] == [(WEEKDAYS[dow], 9, 0)], dow


@pytest.mark.parametrize(
    ("day", "expected"),
    [(datetime(2026, 3, 29), "03:00 CEST"), (datetime(2026, 10, 25), "02:30 CEST")],
)
def test_a_2_30_berlin_schedule_fires_once_on_a_clock_change_day(
    services, make_agent, day, expected
):
    make_agent("demo")
    berlin = zone("Europe/Berlin")
    start = day.replace(tzinfo=berlin).astimezone(UTC)
    schedule_id = make_schedule(services, cron="30 2 * * *", tz="Europe/Berlin", next_run_at=start)
    now = start
    while now < start + timedelta(hours=24):
        fire(services, schedule_id, now)
        now += timedelta(minutes=10)
    fired = [
        r.scheduled_for.astimezone(berlin).strftime("%H:%M %Z") for r in runs(services, schedule_id)
    ]
    assert fired == [expected]


def test_overlap_skip_records_a_skipped_fire_while_the_previous_run_is_still_running(
    services, make_agent, processes, client
):
    make_agent("demo")
    processes.workers()
    schedule_id = make_schedule(services, message="long job sleep=60", overlap="skip")
    assert fire(services, schedule_id, T0 + timedelta(seconds=1)) is FireOutcome.submitted
    first = runs(services, schedule_id)[0].id
    wait_for(lambda: statuses(services, [first])[first] == "running", 30, message="running")
    assert fire(services, schedule_id, T0 + timedelta(minutes=1, seconds=1)) is FireOutcome.skipped
    client.post(f"/api/agents/demo/executions/{first}/stop")
    wait_for(lambda: statuses(services, [first])[first] == "cancelled", 30, message="stopped")
    third = fire(services, schedule_id, T0 + timedelta(minutes=2, seconds=1))
    assert third is FireOutcome.submitted
    records = history(services, schedule_id)
    assert [r.outcome for r in records] == ["submitted", "skipped", "submitted"]
    assert first in records[1].reason and "running" in records[1].reason
    shown = client.get(f"/api/schedules/{schedule_id}").json["history"]
    assert shown[1]["outcome"] == "skipped" and "overlap: skip" in shown[1]["reason"]
    assert shown[0]["execution_id"] == runs(services, schedule_id)[-1].id


def _end_runs(services: Any, schedule_id: str, status: str = "completed") -> None:
    """Finish the schedule's in-flight runs as a worker would (no worker needed here)."""
    with services.Session.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.schedule_id == schedule_id, Execution.status.in_(IN_FLIGHT))
            .values(status=status)
        )


def test_overlap_queue_holds_one_fire_until_the_previous_run_ends(services, make_agent, client):
    make_agent("demo")
    schedule_id = make_schedule(services, overlap="queue")
    assert fire(services, schedule_id, T0 + timedelta(seconds=1)) is FireOutcome.submitted
    with services.Session.begin() as session:
        session.execute(
            update(Execution).where(Execution.schedule_id == schedule_id).values(status="running")
        )
    first = runs(services, schedule_id)[0].id
    assert fire(services, schedule_id, T0 + timedelta(minutes=1)) is FireOutcome.waiting
    assert fire(services, schedule_id, T0 + timedelta(minutes=2)) is FireOutcome.skipped
    assert [r.status for r in runs(services, schedule_id)] == ["running"], "nothing runs beside it"
    records = history(services, schedule_id)
    assert [r.outcome for r in records] == ["submitted", "waiting", "skipped"]
    assert first in records[1].reason and "overlap: queue" in records[1].reason
    assert "already waiting" in records[2].reason
    assert release_waiting(services, "test-scheduler") == 0, "the previous run still runs"
    _end_runs(services, schedule_id)
    assert release_waiting(services, "test-scheduler") == 1
    assert release_waiting(services, "test-scheduler") == 0
    second = runs(services, schedule_id)[1]
    assert second.scheduled_for == T0 + timedelta(minutes=1) and second.status == "pending"
    records = history(services, schedule_id)
    assert records[1].outcome == "submitted" and records[1].execution_id == second.id
    shown = client.get(f"/api/schedules/{schedule_id}").json["history"]
    assert [h["outcome"] for h in shown] == ["skipped", "submitted", "submitted"]
    # The released run is in flight now: the next fire waits behind it in turn.
    assert fire(services, schedule_id, T0 + timedelta(minutes=3)) is FireOutcome.waiting


def test_a_queued_fire_is_released_once_by_racing_schedulers(services, make_agent):
    make_agent("demo")
    schedule_id = make_schedule(services, overlap="queue")
    fire(services, schedule_id, T0 + timedelta(seconds=1))
    assert fire(services, schedule_id, T0 + timedelta(minutes=1)) is FireOutcome.waiting
    _end_runs(services, schedule_id)
    barrier = threading.Barrier(4)
    released: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        released.append(release_waiting(services, f"scheduler-{i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(released) == 1
    assert [r.scheduled_for for r in runs(services, schedule_id)] == [
        T0,
        T0 + timedelta(minutes=1),
    ]


def test_a_queued_fire_of_a_paused_schedule_is_dropped_as_skipped(services, make_agent):
    make_agent("demo")
    schedule_id = make_schedule(services, overlap="queue")
    fire(services, schedule_id, T0 + timedelta(seconds=1))
    assert fire(services, schedule_id, T0 + timedelta(minutes=1)) is FireOutcome.waiting
    with services.Session.begin() as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(enabled=False))
    _end_runs(services, schedule_id, "failed")
    assert release_waiting(services, "test-scheduler") == 1
    assert len(runs(services, schedule_id)) == 1
    last = history(services, schedule_id)[-1]
    assert last.outcome == "skipped" and "paused" in last.reason


def test_overlap_allow_submits_every_fire(services, make_agent):
    make_agent("demo")
    schedule_id = make_schedule(services, overlap="allow")
    for minute in range(3):
        assert fire(services, schedule_id, T0 + timedelta(minutes=minute)) is FireOutcome.submitted
    assert len(runs(services, schedule_id)) == 3


def test_after_downtime_only_the_latest_due_time_fires_and_the_others_are_recorded_missed(
    services, make_agent, client
):
    make_agent("demo")
    schedule_id = make_schedule(services, misfire_grace_seconds=300)
    now = T0 + timedelta(minutes=10, seconds=5)
    assert fire(services, schedule_id, now) is FireOutcome.submitted
    assert fire(services, schedule_id, now) is None  # no burst, however often it is asked
    assert [r.scheduled_for for r in runs(services, schedule_id)] == [T0 + timedelta(minutes=10)]
    records = history(services, schedule_id)
    assert [r.outcome for r in records] == ["missed"] * 10 + ["submitted"]
    assert [r.scheduled_for for r in records] == [T0 + timedelta(minutes=m) for m in range(11)]
    body = client.get(f"/api/schedules/{schedule_id}").json
    assert body["last_run_at"] is not None
    assert body["history"][0]["execution_id"] == runs(services, schedule_id)[0].id
    assert "in time" in body["history"][1]["reason"]


def test_a_latest_due_time_beyond_the_grace_is_recorded_missed_and_nothing_runs(
    services, make_agent
):
    make_agent("demo")
    schedule_id = make_schedule(services, misfire_grace_seconds=10)
    assert fire(services, schedule_id, T0 + timedelta(minutes=10, seconds=30)) is FireOutcome.missed
    assert runs(services, schedule_id) == []
    records = history(services, schedule_id)
    assert [r.outcome for r in records] == ["missed"] * 11
    assert "beyond misfire_grace_seconds (10)" in records[-1].reason


def test_a_queue_limit_refusal_is_recorded_as_skipped_with_the_reason(services, make_agent):
    make_agent("tight", max_parallel_tasks=1, queue_limit=0)
    submit_execution(services, "tight", "fills the only place")
    schedule_id = make_schedule(services, agent="tight")
    assert fire(services, schedule_id, T0) is FireOutcome.skipped
    assert "queue_limit" in history(services, schedule_id)[0].reason
    assert runs(services, schedule_id) == []


def test_concurrent_fires_of_one_due_time_make_one_execution_and_one_record(services, make_agent):
    make_agent("demo")
    schedule_id = make_schedule(services)
    barrier, outcomes = threading.Barrier(8), []

    def race() -> None:
        barrier.wait()
        outcomes.append(fire(services, schedule_id, T0 + timedelta(seconds=1)))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(FireOutcome.submitted) == 1 and outcomes.count(None) == 7
    assert len(runs(services, schedule_id)) == 1 and len(history(services, schedule_id)) == 1


def test_the_database_refuses_a_second_execution_for_the_same_due_time(services, make_agent):
    make_agent("demo")
    schedule_id = make_schedule(services)
    submit_execution(
        services,
        "demo",
        "one",
        triggered_by=Trigger.schedule,
        schedule_id=schedule_id,
        scheduled_for=T0,
    )
    with pytest.raises(AlreadyFired):
        submit_execution(
            services,
            "demo",
            "two",
            triggered_by=Trigger.schedule,
            schedule_id=schedule_id,
            scheduled_for=T0,
        )


def _claimed(services: Any, schedule_id: str, due: datetime) -> None:
    with services.Session.begin() as session:
        session.add(
            ScheduleFire(
                schedule_id=schedule_id,
                scheduled_for=due,
                outcome="claimed",
                scheduler_id="dead:1",
                updated_at=due,
            )
        )


@pytest.mark.parametrize(
    ("grace", "submitted_before", "outcome", "count"),
    [
        (300, False, "submitted", 1),  # died before submitting, still in time: submitted now
        (300, True, "submitted", 1),  # died after submitting: the execution is found, not re-run
        (10, False, "missed", 0),  # died, and it is too late now
    ],
)
def test_a_claim_left_by_a_dead_scheduler_is_settled_without_a_duplicate(
    services, make_agent, grace, submitted_before, outcome, count
):
    make_agent("demo")
    due = utcnow().replace(microsecond=0) - timedelta(seconds=40)
    schedule_id = make_schedule(services, misfire_grace_seconds=grace)
    _claimed(services, schedule_id, due)
    if submitted_before:
        submit_execution(
            services,
            "demo",
            "hello",
            triggered_by=Trigger.schedule,
            schedule_id=schedule_id,
            scheduled_for=due,
        )
    assert recover_stale_claims(services, utcnow(), "rescuer") == 1
    assert recover_stale_claims(services, utcnow(), "rescuer") == 0
    [record] = history(services, schedule_id)
    assert record.outcome == outcome
    assert len(runs(services, schedule_id)) == count
    if count:
        assert record.execution_id == runs(services, schedule_id)[0].id


def test_a_row_held_by_another_transaction_is_reported_locked_and_fired_once_released(
    services, make_agent
):
    make_agent("demo")
    schedule_id = make_schedule(services)
    with services.Session.begin() as holder:  # like the other scheduler mid-claim
        holder.execute(select(Schedule).where(Schedule.id == schedule_id).with_for_update())
        fired = fire_batch(services, [schedule_id], T0, "test", skip_locked=True)
        assert fired.locked == [schedule_id] and fired.outcomes == {}
    fired = fire_batch(services, [schedule_id], T0, "test", skip_locked=True)
    assert fired.locked == [] and fired.outcomes == {schedule_id: FireOutcome.submitted}
