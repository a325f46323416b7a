"""`agx status`: its figures against PostgreSQL, Redis and the broker, and its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

from shared.models import Execution, utcnow
from tests.conftest import wait_for, worker_env


def _status(settings) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "agx", "status", "--json"],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def test_status_reports_slots_waiters_processes_and_the_queue(
    client, services, make_agent, processes, settings
):
    make_agent("demo", max_parallel_tasks=1)
    make_agent("idle")
    processes.workers(threads=4)
    processes.start("reaper", "--interval", "0.5")
    ids = [
        client.post("/api/agents/demo/task", json={"message": m}).json["execution_id"]
        for m in ("long sleep=30", "next", "last")
    ]
    wait_for(lambda: services.slots.holds("demo", ids[0]), 30, message="the first run")

    def ready() -> tuple[int, dict] | None:
        code, found = _status(settings)
        busy = [w["busy"] for w in found["workers"]]
        return (code, found) if busy == ["1"] and found["reapers"] else None

    code, found = wait_for(ready, 30, 0.5, "worker (busy) and reaper presence")
    assert code == 0 and found["problems"] == []
    demo, idle = found["agents"]
    assert (demo["name"], demo["capacity"], demo["slots_in_use"]) == ("demo", 1, 1)
    assert (demo["running"], demo["pending"], demo["waiting"]) == (1, 2, 2)
    assert demo["oldest_pending_seconds"] >= 0 and demo["stuck"] == 0
    assert idle["slots_in_use"] == 0 and idle["oldest_pending_seconds"] is None
    (worker,) = found["workers"]
    assert worker["threads"] == "4" and worker["busy"] == "1"
    queue = found["queue"]
    assert queue["name"] == settings.queue and queue["messages"] == 0
    if settings.effective_broker_url.startswith("amqp"):
        assert queue["consumers"] >= 1


def test_status_exits_1_and_names_what_is_wrong(services, make_agent, settings):
    make_agent("demo")
    long_ago = utcnow() - timedelta(minutes=10)
    with services.Session.begin() as session:
        session.add(Execution(agent_name="demo", message="m", status="failed", error="boom"))
        session.add(
            Execution(
                agent_name="demo",
                message="m",
                status="running",
                started_at=long_ago,
                heartbeat_at=long_ago,
            )
        )
    code, found = _status(settings)
    assert code == 1
    assert "no worker process is alive" in found["problems"]
    assert any("1 running rows not heard of" in p for p in found["problems"])
    (demo,) = found["agents"]
    assert demo["stuck"] == 1 and demo["last_failure"]["error"] == "boom"
    human = subprocess.run(
        [sys.executable, "-m", "agx", "status"],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert human.returncode == 1 and "PROBLEM: no worker process is alive" in human.stdout
