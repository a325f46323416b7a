"""Graceful drain: SIGTERM to `agx workers` lets running agents finish within the grace, stops
the rest as `worker shutting down`, loses nothing and leaves no process behind."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import statuses, wait_for, worker_env
from tests.helpers import finished, gone


def _pool(processes, settings, drain_seconds: float):
    env = worker_env(settings)
    env["AGX_DRAIN_SECONDS"] = str(drain_seconds)
    return processes.start("workers", "--processes", "1", "--threads", "4", env=env)


def _agent_pids(record) -> dict[str, int]:
    if not record.exists():
        return {}
    events = [json.loads(line) for line in record.read_text().splitlines()]
    return {e["message"].split()[0]: e["pid"] for e in events if e["event"] == "start"}


def _submit(client, message: str) -> str:
    return client.post("/api/agents/demo/task", json={"message": message}).json["execution_id"]


def test_sigterm_lets_short_runs_finish_stops_long_ones_and_keeps_waiters(
    client, services, make_agent, processes, settings, tmp_path
):
    make_agent("demo", max_parallel_tasks=2)
    pool = _pool(processes, settings, drain_seconds=4)
    short = _submit(client, "short sleep=2")
    long = _submit(client, "long lines=3 sleep=60")
    waiter = _submit(client, "waiter")  # parked: both slots are taken
    record = tmp_path / "demo.record"
    pids = wait_for(lambda: len(_agent_pids(record)) == 2 and _agent_pids(record), 30)
    time.sleep(0.3)
    pool.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert pool.wait(30) == 0, "the pool exits cleanly after its drain"
    took = time.monotonic() - signalled
    assert finished(services, short).status == "completed"
    row = finished(services, long)
    assert row.status == "failed" and row.error == "worker shutting down"
    assert 3.5 <= took < 15, f"the grace was kept, then the rest stopped ({took:.1f} s)"
    assert all(gone(pid) for pid in pids.values()), "no agent process survives"
    assert statuses(services, [waiter])[waiter] == "pending", "a waiter is not lost"
    assert services.slots.knows("demo", waiter)
    assert not services.slots.holds("demo", long), "its slot was released"
    _pool(processes, settings, drain_seconds=4)
    wait_for(lambda: statuses(services, [waiter])[waiter] == "completed", 30, message="waiter")


def test_a_second_sigterm_cuts_the_grace_short(
    client, services, make_agent, processes, settings, tmp_path
):
    make_agent("demo", max_parallel_tasks=2)
    pool = _pool(processes, settings, drain_seconds=120)
    long = _submit(client, "long sleep=60")
    record = tmp_path / "demo.record"
    pid = wait_for(lambda: _agent_pids(record).get("long"), 30)
    pool.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert finished(services, long) is None, "the first signal lets it run"
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(30) == 0
    row = finished(services, long)
    assert row.status == "failed" and row.error == "worker shutting down"
    assert gone(pid)
