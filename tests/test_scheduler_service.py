"""Real `agx scheduler` processes on the real database, with the test-only seconds field."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import select

from shared.models import Execution, ScheduleFire, utcnow
from shared.settings import TEST_SECONDS_ENV, Settings
from tests.conftest import wait_for, worker_env
from tests.helpers import history, make_schedule, runs

PICKUP_SECONDS = 2.0  #: a change must reach the schedulers within this


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The seconds field switched on for this module's API (the `client` fixture's services)."""
    return replace(settings, cron_seconds=True)


@pytest.fixture
def seconds_env(settings: Settings) -> dict[str, str]:
    """The seconds field switched on for the scheduler processes too."""
    return {**worker_env(settings), TEST_SECONDS_ENV: "1"}


def start_scheduler(processes: Any, env: dict[str, str]) -> Any:
    return processes.start("scheduler", "--poll-seconds", "1", env=env)


def logs(processes: Any) -> str:
    return "\n".join(p.read_text(errors="replace") for p in processes.log_dir.glob("*.log"))


def test_two_schedulers_fire_every_due_time_exactly_once(
    client, services, make_agent, processes, seconds_env
):
    make_agent("demo", queue_limit=1000)
    schedule_id = client.post(
        "/api/agents/demo/schedules",
        json={"cron": "*/2 * * * * *", "message": "tick", "overlap": "allow"},
    ).json["id"]
    pair = [start_scheduler(processes, seconds_env) for _ in range(2)]
    wait_for(lambda: len(runs(services, schedule_id)) >= 6, 40, 0.1, "six fires")
    due = [r.scheduled_for for r in runs(services, schedule_id)][:6]
    assert all(b - a == timedelta(seconds=2) for a, b in pairwise(due)), due  # none missed
    assert all(r.triggered_by == "schedule" for r in runs(services, schedule_id))
    records = [r for r in history(services, schedule_id) if r.scheduled_for <= due[-1]]
    assert [r.scheduled_for for r in records] == due  # one record each, never a second
    assert {r.outcome for r in records} == {"submitted"}
    assert all(p.poll() is None for p in pair), logs(processes)
    lag = [(r.created_at - r.scheduled_for).total_seconds() for r in runs(services, schedule_id)]
    assert max(lag[:6]) < 1.5, lag


def test_creations_edits_pauses_and_deletions_are_picked_up_without_a_restart(
    client, services, make_agent, processes, seconds_env
):
    make_agent("demo", queue_limit=1000)
    start_scheduler(processes, seconds_env)
    schedule_id = client.post(
        "/api/agents/demo/schedules",
        json={"cron": "0 0 1 1 *", "message": "rare", "overlap": "allow"},
    ).json["id"]
    wait_for(lambda: f"schedule {schedule_id} loaded" in logs(processes), 10, 0.1, "loaded")

    edited = utcnow()
    client.patch(f"/api/schedules/{schedule_id}", json={"cron": "* * * * * *"})
    first = wait_for(lambda: runs(services, schedule_id), 10, 0.05, "a fire after the edit")[0]
    assert (first.created_at - edited).total_seconds() < PICKUP_SECONDS + 1

    paused = utcnow()
    client.patch(f"/api/schedules/{schedule_id}", json={"enabled": False})
    dropped = f"schedule {schedule_id} paused or deleted"
    wait_for(lambda: dropped in logs(processes), PICKUP_SECONDS + 1, 0.05, "pause seen")
    assert all(r.scheduled_for <= paused for r in runs(services, schedule_id))

    resumed = utcnow()
    client.patch(f"/api/schedules/{schedule_id}", json={"enabled": True})
    again = wait_for(
        lambda: [r for r in runs(services, schedule_id) if r.scheduled_for > resumed],
        10,
        0.05,
        "a fire after resuming",
    )[0]
    assert (again.created_at - resumed).total_seconds() < PICKUP_SECONDS + 1

    deleted = utcnow()
    assert client.delete(f"/api/schedules/{schedule_id}").status_code == 204
    wait_for(lambda: logs(processes).count(dropped) == 2, PICKUP_SECONDS + 1, 0.05, "delete seen")
    with services.Session() as session:
        late = session.scalars(
            select(Execution).where(
                Execution.schedule_id == schedule_id, Execution.scheduled_for > deleted
            )
        ).all()
    assert late == []


def test_on_start_a_missed_schedule_fires_once_within_the_grace_and_never_beyond_it(
    services, make_agent, processes, seconds_env
):
    make_agent("demo")
    if (now := utcnow()).second >= 40:  # a minute's own fire must not join the catch-up's
        time.sleep(60.5 - now.second - now.microsecond / 1e6)
    minute = utcnow().replace(second=0, microsecond=0)
    recent = make_schedule(
        services,
        cron="* * * * *",
        next_run_at=minute - timedelta(minutes=10),
        misfire_grace_seconds=300,
    )
    new_year = datetime(utcnow().year, 1, 1, tzinfo=UTC)
    stale = make_schedule(
        services, cron="0 0 1 1 *", next_run_at=new_year, misfire_grace_seconds=300
    )
    start_scheduler(processes, seconds_env)
    wait_for(lambda: runs(services, recent) and history(services, stale), 15, 0.05, "catch-up")
    started = utcnow()
    fired = [r for r in runs(services, recent) if r.scheduled_for <= started]
    assert len(fired) == 1 and started - fired[0].scheduled_for <= timedelta(seconds=61)
    before = [r for r in history(services, recent) if r.scheduled_for < fired[0].scheduled_for]
    assert len(before) >= 10 and {r.outcome for r in before} == {"missed"}
    [missed] = history(services, stale)
    assert (missed.outcome, missed.scheduled_for) == ("missed", new_year)
    assert "beyond misfire_grace_seconds" in missed.reason and runs(services, stale) == []


def test_the_scheduler_stops_cleanly_on_sigterm(services, processes, seconds_env):
    proc = start_scheduler(processes, seconds_env)
    wait_for(lambda: "started" in logs(processes), 15, 0.05, "started")
    proc.terminate()
    assert proc.wait(15) == 0
    assert "stopped" in logs(processes)
    with services.Session() as session:
        assert session.scalars(select(ScheduleFire)).all() == []


def test_the_due_set_hands_out_each_id_once_in_batches_and_ends_when_closed():
    from scheduler.dueset import DueSet

    due = DueSet()
    for i in range(120):
        due.add(f"s{i % 100}")  # an id added twice while waiting is fired once
    batches = [due.take(50), due.take(50)]
    assert [len(b) for b in batches] == [50, 50]
    assert sorted(batches[0] + batches[1]) == sorted(f"s{i}" for i in range(100))
    due.add("last")
    due.close()
    assert due.take(50) == ["last"] and due.take(50) is None


def test_overlap_queue_runs_one_after_another_end_to_end(
    client, services, make_agent, processes, seconds_env
):
    """A run takes 3 s, the schedule fires every second: with `queue` the runs never overlap
    (even though the agent has free slots), each queued fire starts after the previous run
    ended, and the fires in between are skipped."""
    make_agent("demo", max_parallel_tasks=3)
    processes.workers(threads=3)
    start_scheduler(processes, seconds_env)
    schedule_id = client.post(
        "/api/agents/demo/schedules",
        json={"cron": "* * * * * *", "message": "slow sleep=3", "overlap": "queue"},
    ).json["id"]
    wait_for(
        lambda: len([r for r in runs(services, schedule_id) if r.status == "completed"]) >= 3,
        60,
        0.2,
        "three runs completed",
    )
    done = sorted(
        (r for r in runs(services, schedule_id) if r.completed_at), key=lambda r: r.started_at
    )
    for before, after in pairwise(done):
        assert after.started_at >= before.completed_at, "queued runs overlapped"
    outcomes = {r.outcome for r in history(services, schedule_id)}
    assert {"submitted", "skipped"} <= outcomes, outcomes
