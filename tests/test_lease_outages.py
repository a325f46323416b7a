"""Slot leases through outages: renewals never wait on PostgreSQL, and a worker that cannot
renew kills its own agent before anyone else may take the slot (invariants 3 and 4)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from sqlalchemy import text

from producer import submit_execution
from shared import keys
from shared.models import Execution
from shared.services import Services
from tests.conftest import Processes, statuses, wait_for
from tests.test_stop_and_faults import _agent_pids, _gone


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
    agent = wait_for(lambda: _agent_pids(str(tmp_path / "demo.record")), 10, message="agent")[0]
    lowest = float("inf")
    with services.engine.connect() as conn:  # a row lock: every heartbeat_at write hangs
        conn.execute(text("SELECT 1 FROM executions WHERE id = :id FOR UPDATE"), {"id": eid})
        until = time.monotonic() + held
        while time.monotonic() < until:
            lowest = min(lowest, _lease_left_ms(services.redis, "demo", eid))
            time.sleep(0.2)
        conn.rollback()
    assert lowest > 0, f"the lease lapsed ({lowest:.0f} ms) while PostgreSQL hung"
    assert not _gone(agent), "the agent ran on"
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
        agent = wait_for(lambda: _agent_pids(str(tmp_path / "demo.record")), 10, message="pid")[0]
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        frozen, since = True, time.monotonic()
        wait_for(lambda: _gone(agent), settings.lease_seconds + 5, message="the fence")
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
