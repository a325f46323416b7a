"""No agent outlives the worker pool that started it, however the pool dies (issue: leases)."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from tests.conftest import statuses, wait_for
from tests.helpers import agent_pids, gone, grandchild_pid


def test_sigkill_to_the_whole_pool_group_kills_its_agents_and_what_they_started(
    client, services, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=2)
    pool = processes.workers(threads=2)
    ids = [
        client.post(
            "/api/agents/demo/task", json={"message": f"long{i} grandchild lines=2 sleep=60"}
        ).json["execution_id"]
        for i in range(2)
    ]
    wait_for(lambda: set(statuses(services, ids).values()) == {"running"}, 30, message="running")
    grandchildren = [
        wait_for(lambda i=i: grandchild_pid(services, i), 30, message="grandchild") for i in ids
    ]
    agents = [p for p in agent_pids(str(tmp_path / "demo.record")) if p not in grandchildren]
    assert len(agents) == 2
    assert all(psutil.Process(a).pid != pool.pid for a in agents)
    os.killpg(pool.pid, signal.SIGKILL)  # the pool's whole process group, subreaper included
    try:
        wait_for(
            lambda: all(gone(p) for p in agents + grandchildren),
            10,
            message="agents and their children die with the pool",
        )
    finally:
        for pid in agents + grandchildren:  # never leave them to the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigkill_to_one_worker_kills_what_its_agent_started_and_the_pool_goes_on(
    client, services, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=1)
    pool = processes.workers(threads=2)
    eid = client.post(
        "/api/agents/demo/task", json={"message": "one grandchild lines=1 sleep=60"}
    ).json["execution_id"]
    grandchild = wait_for(lambda: grandchild_pid(services, eid), 30, message="grandchild")
    agent = [p for p in agent_pids(str(tmp_path / "demo.record")) if p != grandchild][0]
    try:
        os.kill(psutil.Process(agent).ppid(), signal.SIGKILL)
        wait_for(lambda: gone(agent) and gone(grandchild), 10, message="both die")
    finally:
        for pid in (agent, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert pool.poll() is None, "the pool lives on"


def test_the_guardian_leaves_with_the_pool(processes, services):
    pool = processes.workers(threads=1)
    guardian = wait_for(
        lambda: [p for p in psutil.process_iter(["cmdline"]) if _guards(p, pool.pid)],
        30,
        message="the guardian",
    )[0]
    os.killpg(pool.pid, signal.SIGKILL)
    guardian.wait(10)  # raises if it is still there


def _guards(proc: psutil.Process, pool_pid: int) -> bool:
    args = proc.info["cmdline"] or []
    return "agx.guardian" in args and any(f"agx-guard-{pool_pid}-" in a for a in args)


def test_runs_skip_their_parent_death_signal_only_while_the_guardian_answers():
    """Under a pool, a run's safety net is the guardian; once it is gone, runs get their own
    parent-death signal again."""
    from agx.pool import _start_guardian
    from workers.groups import GroupRegistry

    assert not GroupRegistry(None).guarded()  # outside a pool: always armed
    guardian, address = _start_guardian()
    try:
        registry = GroupRegistry(address)
        assert registry.guarded()
        assert registry.guarded()  # the same connection, still answered
        guardian.kill()
        guardian.wait(10)
        assert not registry.guarded()
    finally:
        guardian.kill()
        guardian.wait(10)
        assert guardian.stdin is not None
        guardian.stdin.close()


def test_a_groups_end_goes_with_the_next_start_or_within_the_delay():
    """What a worker tells the guardian: a start at once, carrying the ends still waiting; an
    end no start takes along is sent on its own within END_DELAY_SECONDS."""
    import socket
    import time
    import uuid

    from workers.groups import END_DELAY_SECONDS, GroupRegistry

    address = f"agx-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)
    listener.listen(1)
    try:
        registry = GroupRegistry(address)
        registry.started(101)
        conn, _ = listener.accept()
        conn.settimeout(5)
        assert conn.recv(100) == b"+101\n"
        registry.ended(101)
        registry.started(102)
        assert conn.recv(100) == b"-101\n+102\n"  # one write: the end went with the start
        ended_at = time.monotonic()
        registry.ended(102)
        assert conn.recv(100) == b"-102\n"
        assert time.monotonic() - ended_at <= END_DELAY_SECONDS + 0.5
        conn.close()
    finally:
        listener.close()


def test_the_pool_finds_its_children_without_scanning_the_host():
    import subprocess

    from agx.pool import _children, _children_by_scan

    started = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        ours = {p.pid for p in started}
        assert ours <= set(_children())
        assert ours <= set(_children_by_scan())  # the fallback finds them as well
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
