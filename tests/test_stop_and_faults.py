"""Stop, timeouts, redaction and crash recovery on real processes (invariants 2, 4, 6, 7, 8)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from producer import submit_execution
from producer.submit import Publication
from shared import events
from shared.models import Execution
from tests.conftest import queued_messages, statuses, wait_for
from tests.helpers import agent_pids, gone, grandchild_pid, stored, terminal


def test_stopping_a_pending_execution_cancels_it_at_once_and_frees_its_place(
    client, services, make_agent
):
    make_agent("demo", max_parallel_tasks=1)
    first = client.post("/api/agents/demo/task", json={"message": "a"}).json["execution_id"]
    second = client.post("/api/agents/demo/task", json={"message": "b"}).json["execution_id"]
    assert services.slots.position("demo", second) == 2
    resp = client.post(f"/api/agents/demo/executions/{second}/stop")
    assert resp.status_code == 200 and resp.json["status"] == "cancelled"
    assert resp.json["error"] == "stopped by request"
    assert services.slots.position("demo", second) is None
    assert services.slots.position("demo", first) == 1
    again = client.post(f"/api/agents/demo/executions/{second}/stop")
    assert again.status_code == 409
    assert client.post("/api/agents/demo/executions/nope/stop").status_code == 404


def test_stopping_a_running_execution_kills_the_agent_and_its_grandchild_and_keeps_output(
    client, services, make_agent, processes
):
    make_agent("demo", max_parallel_tasks=1)
    processes.workers()
    eid = client.post(
        "/api/agents/demo/task", json={"message": "long grandchild lines=5 sleep=60"}
    ).json["execution_id"]
    waiter = client.post("/api/agents/demo/task", json={"message": "next"}).json["execution_id"]
    grandchild = wait_for(lambda: grandchild_pid(services, eid), 30, message="grandchild")
    started = time.monotonic()
    resp = client.post(f"/api/agents/demo/executions/{eid}/stop")
    assert resp.status_code == 202
    wait_for(lambda: statuses(services, [eid])[eid] == "cancelled", 15, message="cancelled")
    assert time.monotonic() - started < 8, "SIGINT reaches the agent at once"
    row, transcript = stored(services, eid)
    assert row.error == "stopped by request"
    assert "grandchild pid=" in transcript.content and "line 4" in transcript.content
    wait_for(lambda: gone(grandchild), 10, message="grandchild gone")
    wait_for(
        lambda: statuses(services, [waiter])[waiter] == "completed",
        30,
        message="the waiter runs once the slot is free",
    )


def test_stop_racing_completion_never_yields_completed_after_an_accepted_stop(
    client, services, make_agent, processes
):
    make_agent("demo", max_parallel_tasks=3, queue_limit=200)
    processes.workers(threads=4)
    accepted, refused = [], []
    for i in range(12):
        eid = client.post(
            "/api/agents/demo/task", json={"message": f"race {i} sleep=0.{i % 4}"}
        ).json["execution_id"]
        wait_for(lambda eid=eid: statuses(services, [eid])[eid] != "pending", 30, message="claimed")
        resp = client.post(f"/api/agents/demo/executions/{eid}/stop")
        (accepted if resp.status_code in (200, 202) else refused).append(eid)
        assert resp.status_code in (200, 202, 409)
    every = accepted + refused
    wait_for(
        lambda: all(terminal(s) for s in statuses(services, every).values()),
        60,
        message="all done",
    )
    final = statuses(services, every)
    assert all(final[e] == "cancelled" for e in accepted), final
    assert all(final[e] == "completed" for e in refused), final
    assert accepted, "at least one stop landed while running"


def test_a_timeout_kills_an_agent_that_ignores_sigint_and_sigterm_and_keeps_the_transcript(
    client, services, make_agent, processes
):
    make_agent("demo", timeout_seconds=2)
    processes.workers()
    eid = client.post(
        "/api/agents/demo/task", json={"message": "stubborn ignore-signals lines=3 sleep=60"}
    ).json["execution_id"]
    wait_for(lambda: statuses(services, [eid])[eid] == "failed", 30, message="timed out")
    row, transcript = stored(services, eid)
    assert "timed out after 2 s" in row.error
    assert "line 2" in transcript.content


def test_a_fake_credential_never_reaches_the_transcript_or_any_stream(
    client, services, make_agent, processes
):
    make_agent("demo")
    processes.workers()
    eid = client.post("/api/agents/demo/task", json={"message": "leak secret"}).json["execution_id"]
    wait_for(lambda: statuses(services, [eid])[eid] == "completed", 30, message="completed")
    _, transcript = stored(services, eid)
    streamed = " ".join(e.get("line", "") for e in events.read_stream(services.redis, eid, 0))
    for text in (transcript.content, streamed):
        assert "[REDACTED]" in text
        assert "sk-ant-demo1234567890abcdefXYZ" not in text
        assert "abcdef0123456789abcdef0123" not in text


def _pool(pool):
    """The worker pool's own processes (master and workers), not the agents they run."""
    found = []
    for proc in psutil.Process(pool.pid).children(recursive=True) + [psutil.Process(pool.pid)]:
        try:
            if "agx.demo_agent" not in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_worker_killed_with_sigkill_mid_run_is_failed_its_slot_returns_and_no_agent_survives(
    client, services, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=1)
    processes.workers(threads=2)
    eid = client.post(
        "/api/agents/demo/task", json={"message": "doomed grandchild lines=3 sleep=60"}
    ).json["execution_id"]
    waiter = client.post("/api/agents/demo/task", json={"message": "after"}).json["execution_id"]
    grandchild = wait_for(lambda: grandchild_pid(services, eid), 30, message="grandchild")
    agent = [p for p in agent_pids(str(tmp_path / "demo.record")) if p != grandchild]
    assert len(agent) == 1, "the agent process is visible"
    worker = psutil.Process(agent[0]).ppid()
    killed_at = time.monotonic()
    os.kill(worker, signal.SIGKILL)  # kill -9 the worker process that runs the agent
    wait_for(
        lambda: gone(agent[0]) and gone(grandchild),
        10,
        message="agent and grandchild die with their worker",
    )
    processes.start("reaper", "--interval", "0.5")
    processes.workers(threads=2)
    wait_for(lambda: statuses(services, [eid])[eid] == "failed", 45, message="worker lost")
    lost_after = time.monotonic() - killed_at
    row, transcript = stored(services, eid)
    assert "worker lost" in row.error
    assert "line 2" in transcript.content, "the transcript is rebuilt from the stream"
    wait_for(
        lambda: statuses(services, [waiter])[waiter] == "completed", 45, message="the waiter runs"
    )
    print(f"\nlost worker detected after {lost_after:.1f} s")
    assert lost_after < 45


def test_a_worker_paused_past_its_lease_can_write_nothing_and_nothing_runs_twice(
    client, services, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=1)
    pool = processes.workers(threads=2)
    eid = client.post("/api/agents/demo/task", json={"message": "paused sleep=8"}).json[
        "execution_id"
    ]
    wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
    paused = _pool(pool)
    for proc in paused:
        proc.suspend()
    try:
        processes.start("reaper", "--interval", "0.5")
        wait_for(lambda: statuses(services, [eid])[eid] == "failed", 45, message="reaped")
    finally:
        for proc in paused:
            proc.resume()
    row, _ = stored(services, eid)
    time.sleep(0)  # the resumed worker now races to write: it must lose
    wait_for(
        lambda: not agent_pids(str(tmp_path / "demo.record")),
        20,
        message="the resumed worker kills its agent",
    )
    final, _ = stored(services, eid)
    assert final.status == "failed" and "worker lost" in final.error
    assert final.attempt == 1 and final.completed_at == row.completed_at
    starts = (tmp_path / "demo.record").read_text().count('"start"')
    assert starts == 1, "never run twice"


def test_nothing_is_lost_when_redis_restarts_with_executions_running_and_waiting(
    services, settings, make_agent, private_redis, tmp_path, broker_kind
):
    """Slots, waiting lists (and with the Redis broker, the queue) vanish; PostgreSQL rebuilds."""
    from dataclasses import replace

    from shared.services import Services
    from tests.conftest import Processes

    own = replace(
        settings,
        redis_url=private_redis.url,
        broker_url=settings.broker_url if broker_kind == "rabbitmq" else private_redis.url,
    )
    svc = Services(own, pool_size=3)
    procs = Processes(own, tmp_path)
    try:
        make_agent("demo", max_parallel_tasks=2)
        procs.workers(threads=4)
        procs.start("reaper", "--interval", "0.5")
        ids = [submit_execution(svc, "demo", f"job {i} sleep=2").execution.id for i in range(6)]
        wait_for(
            lambda: list(statuses(services, ids).values()).count("running") == 2,
            30,
            message="two running, four waiting",
        )
        private_redis.restart()
        wait_for(
            lambda: set(statuses(services, ids).values()) <= {"completed", "failed"},
            120,
            message="all terminal",
        )
    finally:
        procs.stop_all()
        svc.close()
    final = statuses(services, ids)
    assert list(final.values()).count("completed") == 6, (final, procs.logs()[-3000:])
    records = [line for line in (tmp_path / "demo.record").read_text().splitlines()]
    starts = sorted((json_t(r), 1) for r in records if '"start"' in r)
    ends = sorted((json_t(r), -1) for r in records if '"end"' in r)
    assert len(starts) == 6, "each ran exactly once"
    running = peak = 0
    for _, delta in sorted(starts + ends, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    assert peak <= 2, "the limit held across the restart"


def json_t(line: str) -> float:
    import json

    return float(json.loads(line)["t"])


def _rabbitmqctl(*args: str) -> None:
    import subprocess

    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _need_rabbitmqctl(settings) -> None:
    """Skip unless the shared RabbitMQ is there and rabbitmqctl can stop and start it."""
    import shutil

    if not settings.broker_url or not settings.broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ is not reachable here")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")


def _each_completed_once(services, ids: list[str], tmp_path, message: str) -> None:
    """Every execution ends completed at its first attempt, its agent started once."""
    wait_for(lambda: set(statuses(services, ids).values()) == {"completed"}, 90, message=message)
    with services.Session() as session:
        assert {session.get(Execution, i).attempt for i in ids} == {1}
    assert (tmp_path / "demo.record").read_text().count('"start"') == len(ids)


def test_submissions_made_while_rabbitmq_is_down_run_once_each_after_it_returns(
    services, settings, make_agent, processes, tmp_path
):
    """Touches the shared RabbitMQ (stop_app/start_app), restored in `finally`."""
    _need_rabbitmqctl(settings)
    make_agent("demo")
    processes.workers(threads=2)
    processes.start("reaper", "--interval", "0.5")
    _rabbitmqctl("stop_app")
    try:
        submitted = [submit_execution(services, "demo", f"offline {i}") for i in range(3)]
    finally:
        _rabbitmqctl("start_app")
    assert not any(s.publication is Publication.sent for s in submitted)
    ids = [s.execution.id for s in submitted]
    _each_completed_once(services, ids, tmp_path, "all completed once RabbitMQ is back")


def test_messages_a_rabbitmq_restart_drops_are_sent_again_and_each_runs_once(
    services, settings, make_agent, processes, tmp_path
):
    """agx's messages are transient (shared/broker.py): a restart drops those not yet taken;
    the reaper names their waiters again. Touches the shared RabbitMQ, restored in `finally`."""
    _need_rabbitmqctl(settings)
    make_agent("demo")
    submitted = [submit_execution(services, "demo", f"dropped {i}") for i in range(3)]
    assert all(s.publication is Publication.sent for s in submitted)
    assert queued_messages(settings) == 3
    try:
        _rabbitmqctl("stop_app")
    finally:
        _rabbitmqctl("start_app")
    assert queued_messages(settings) == 0, "transient: the restart dropped them"
    processes.workers(threads=2)
    processes.start("reaper", "--interval", "0.5")
    ids = [s.execution.id for s in submitted]
    _each_completed_once(services, ids, tmp_path, "all completed, sent again by the reaper")
