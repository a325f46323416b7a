"""No agent outlives the worker pool that started it, however the pool dies (issue: leases)."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from tests.conftest import statuses, wait_for
from tests.test_stop_and_faults import _agent_pids, _gone, _grandchild_pid


def test_sigkill_to_the_whole_pool_group_kills_its_agents(
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
        wait_for(lambda i=i: _grandchild_pid(services, i), 30, message="grandchild") for i in ids
    ]
    agents = [p for p in _agent_pids(str(tmp_path / "demo.record")) if p not in grandchildren]
    assert len(agents) == 2
    assert all(psutil.Process(a).pid != pool.pid for a in agents)
    os.killpg(pool.pid, signal.SIGKILL)  # the pool's whole process group, subreaper included
    try:
        wait_for(lambda: all(_gone(p) for p in agents), 10, message="agents die with the pool")
    finally:
        for pid in agents + grandchildren:  # never leave them to the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
