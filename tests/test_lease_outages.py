"""Slot leases through outages: renewals never wait on PostgreSQL, and a worker that cannot
renew kills its own agent before anyone else may take the slot (invariants 3 and 4)."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from producer import submit_execution
from shared import events, keys
from shared.models import Execution, Transcript
from shared.services import Services
from tests.conftest import Processes, statuses, wait_for
from tests.helpers import agent_pids, gone, postgres_outage
from workers import reaper


def _lease_left_ms(client, agent: str, execution_id: str) -> float:
    """Milliseconds until this execution's lease lapses, by Redis's own clock (<0: lapsed)."""
    score = client.zscore(keys.slots(agent), execution_id)
    seconds, micros = client.time()
    return (score or 0) - (seconds * 1000 + micros / 1000)


def test_a_hanging_database_write_does_not_stop_lease_renewal(
    services, settings, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=1)
    processes.workers(threads=2)
    held = settings.lease_seconds + 6  # past a lease, whenever the first write starts to hang
    eid = submit_execution(services, "demo", f"long sleep={held + 3:.0f}").execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
    agent = wait_for(lambda: agent_pids(str(tmp_path / "demo.record")), 10, message="agent")[0]
    lowest = float("inf")
    with services.engine.connect() as conn:  # a row lock: every heartbeat_at write hangs
        conn.execute(text("SELECT 1 FROM executions WHERE id = :id FOR UPDATE"), {"id": eid})
        until = time.monotonic() + held
        while time.monotonic() < until:
            lowest = min(lowest, _lease_left_ms(services.redis, "demo", eid))
            time.sleep(0.2)
        conn.rollback()
    assert lowest > 0, f"the lease lapsed ({lowest:.0f} ms) while PostgreSQL hung"
    assert not gone(agent), "the agent ran on"
    wait_for(lambda: statuses(services, [eid])[eid] == "completed", 30, message="completed")


def test_a_worker_that_cannot_renew_kills_its_agent_before_the_lease_can_lapse(
    services, settings, make_agent, private_redis, tmp_path
):
    own = replace(settings, redis_url=private_redis.url)
    if not settings.effective_broker_url.startswith("amqp"):
        own = replace(own, broker_url=private_redis.url)
    svc = Services(own, pool_size=3)
    procs = Processes(own, tmp_path)
    frozen = False
    try:
        make_agent("demo", max_parallel_tasks=1)
        procs.workers(threads=2)
        eid = submit_execution(svc, "demo", "long lines=2 sleep=60").execution.id
        nxt = submit_execution(svc, "demo", "next").execution.id
        wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
        agent = wait_for(lambda: agent_pids(str(tmp_path / "demo.record")), 10, message="pid")[0]
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        frozen, since = True, time.monotonic()
        wait_for(lambda: gone(agent), settings.lease_seconds + 5, message="the fence")
        fenced_after = time.monotonic() - since
        assert fenced_after < settings.lease_seconds, "killed before the lease could lapse"
        time.sleep(max(0.0, settings.lease_seconds + 1 - fenced_after))  # Redis stays away
        os.kill(private_redis.proc.pid, signal.SIGCONT)
        frozen = False
        wait_for(lambda: statuses(services, [eid])[eid] == "failed", 30, message="failed")
        wait_for(lambda: statuses(services, [nxt])[nxt] == "completed", 60, message="next runs")
    finally:
        if frozen:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        procs.stop_all()
        svc.close()
    with services.Session() as session:
        row = session.get(Execution, eid)
    assert row.error.startswith("could not renew its slot lease for "), row.error
    assert row.error.endswith("s; stopped to keep the agent's limit")
    print(f"\nfenced {fenced_after:.1f} s after Redis froze (lease {settings.lease_seconds} s)")


def test_a_run_that_ends_while_postgresql_is_away_is_recorded_completed(
    services, settings, make_agent, processes, tmp_path
):
    make_agent("demo")
    processes.workers(threads=2)
    eid = submit_execution(services, "demo", "patient sleep=2").execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
    record = tmp_path / "demo.record"
    with postgres_outage(services.engine):  # no session, no new ones
        wait_for(lambda: record.exists() and '"end"' in record.read_text(), 30, message="end")
        time.sleep(2)  # the outage goes on past the agent's end: the terminal write fails
    wait_for(lambda: statuses(services, [eid])[eid] != "running", 30, message="recorded")
    with services.Session() as session:
        row = session.get(Execution, eid)
    assert row.status == "completed" and row.response == "demo: patient sleep=2", row.error
    assert f"terminal write of {eid} failed; retrying" in processes.logs()


def _running_row(services, message: str, lines: list[str]) -> str:
    """A row left running by a worker that died after its agent printed `lines`."""
    eid = submit_execution(services, "demo", message).execution.id
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with services.Session.begin() as session:
        row = session.get(Execution, eid)
        row.status, row.attempt, row.started_at, row.heartbeat_at = (
            "running",
            1,
            long_ago,
            long_ago,
        )
    services.slots.release("demo", eid, 3)  # its lease lapsed
    batch = [events.status_event(1, "running")]
    batch += [events.line_event(i + 2, line) for i, line in enumerate(lines)]
    events.emit(services.redis, eid, batch)
    return eid


def test_the_reaper_judges_a_lost_run_from_its_stream(services, make_agent):
    make_agent("demo")
    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s1", "model": "m"})
    result = json.dumps(
        {"type": "result", "is_error": False, "result": "done", "total_cost_usd": 0.5}
    )
    done = _running_row(services, "finished", [init, result])
    lost = _running_row(services, "cut short", [init])
    assert sorted(reaper.fail_lost(services)) == sorted([done, lost])
    with services.Session() as session:
        rows = {eid: session.get(Execution, eid) for eid in (done, lost)}
        transcript = session.get(Transcript, done).content
    assert rows[done].status == "completed" and rows[done].response == "done"
    assert float(rows[done].cost) == 0.5 and rows[done].claude_session_id == "s1"
    assert transcript.splitlines() == [init, result]
    assert rows[lost].status == "failed" and "worker lost" in rows[lost].error
    last = events.read_stream(services.redis, done, 0)[-1]
    assert last["status"] == "completed" and last["response"] == "done"
