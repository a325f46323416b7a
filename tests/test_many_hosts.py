"""Many hosts: worker pools in separate network namespaces, each with its own hostname and
reaching the services over a veth pair, share an agent's slot limit and recover each other's
crashes (tests/hosts.py makes the hosts)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import wait_for, worker_env
from tests.helpers import finished, gone
from tests.hosts import Host, can_make_hosts, hosts

WHY_NOT = can_make_hosts()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no test hosts: {WHY_NOT}")
AGX = [sys.executable, "-m", "agx"]


def _env(settings, host: Host) -> dict[str, str]:
    env = worker_env(settings)
    for name in ("AGX_DATABASE_URL", "AGX_REDIS_URL", "AGX_BROKER_URL"):
        env[name] = env[name].replace("127.0.0.1", host.gateway).replace("localhost", host.gateway)
    return env


def _ports(settings) -> list[int]:
    urls = (settings.database_url, settings.redis_url, settings.effective_broker_url)
    return sorted({urlsplit(u).port or 0 for u in urls if u})


def _spans(record) -> list[tuple[float, float]]:
    starts: dict[int, float] = {}
    spans = []
    for line in record.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "start":
            starts[event["pid"]] = event["t"]
        elif event["event"] == "end" and event["pid"] in starts:
            spans.append((starts.pop(event["pid"]), event["t"]))
    return spans


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _submit(client, message: str) -> str:
    return client.post("/api/agents/demo/task", json={"message": message}).json["execution_id"]


def _host_of(services, execution_id: str) -> str | None:
    row = finished(services, execution_id)
    if row is None:
        with services.Session() as session:
            from shared.models import Execution

            row = session.get(Execution, execution_id)
    return row.worker_id.split(":")[0] if row and row.worker_id else None


def test_two_hosts_share_the_slot_limit_and_recover_each_others_crash(
    client, services, make_agent, settings, tmp_path
):
    make_agent("demo", max_parallel_tasks=2)
    record = tmp_path / "demo.record"
    with hosts(["agx-h1", "agx-h2"], _ports(settings)) as (h1, h2):
        pools = {}
        for host in (h1, h2):
            env = _env(settings, host)
            log = tmp_path / f"{host.name}.log"
            pools[host.name] = host.start([*AGX, "workers", "-p", "1", "-t", "4"], env, log)
            host.start([*AGX, "reaper", "--interval", "0.5"], env, log)
        ids = [_submit(client, f"run{i} sleep=1") for i in range(8)]
        for eid in ids:
            assert wait_for(lambda e=eid: finished(services, e), 60).status == "completed"
        assert _most_at_once(_spans(record)) == 2, "the limit held across both hosts"
        ran_on = {_host_of(services, eid) for eid in ids}
        assert ran_on == {"agx-h1", "agx-h2"}, f"both hosts took runs: {ran_on}"

        long = _submit(client, "long sleep=60")
        after = _submit(client, "after")  # a free slot: it runs at once somewhere
        wait_for(lambda: _host_of(services, long), 30, message="the long run started")
        assert wait_for(lambda: finished(services, after), 30).status == "completed"
        doomed = _host_of(services, long)
        os.killpg(pools[doomed].pid, signal.SIGKILL)  # the host's whole pool dies
        killed_at = time.monotonic()
        row = wait_for(lambda: finished(services, long), 60, message="the lost run settled")
        assert row.status == "failed" and "worker lost" in row.error
        survivor = ({"agx-h1", "agx-h2"} - {doomed}).pop()
        again = _submit(client, "again")
        assert wait_for(lambda: finished(services, again), 30).status == "completed"
        assert _host_of(services, again) == survivor
        print(
            f"\n{doomed} died; its run was settled by {survivor}'s reaper in "
            f"{time.monotonic() - killed_at:.1f} s"
        )
        pids = [json.loads(x)["pid"] for x in record.read_text().splitlines()]
        assert all(gone(pid) for pid in pids), "no agent outlives its host's pool"
