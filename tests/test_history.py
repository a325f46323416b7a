"""A history check: steady submissions to agents that run longer than the lease, two worker
pools, and a fault every few seconds; then every invariant is checked against what happened.

Faults, each once per round (`make history` runs more rounds): kill -9 of one worker process,
Redis frozen past the lease, a PostgreSQL outage for the agx database, kill -9 of a whole
pool's process group (another is started at once). Agents are sampled every 50 ms. A pool
frozen past its lease is left out: a frozen worker cannot fence its agents (see
docs/architecture.md); tests/test_stop_and_faults.py checks that it writes nothing after.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from producer import submit_execution
from shared.errors import QueueFull
from shared.models import Agent, Execution
from shared.services import Services
from shared.states import IN_FLIGHT
from tests.conftest import Processes, wait_for
from tests.helpers import postgres_outage

LIMITS = {"h2": 2, "h3": 3}  #: agent -> max_parallel_tasks
LEASE_SECONDS = 6.0
SUBMIT_EVERY_SECONDS = 0.8
#: Fault cycles; `make history` runs more (AGX_HISTORY_ROUNDS).
ROUNDS = int(os.environ.get("AGX_HISTORY_ROUNDS", "1"))
#: A result an agent printed this shortly before its worker was killed may still have been in
#: the pipe, unread: nobody can know that run succeeded, so it is not held to "completed".
UNREAD_SECONDS = 1.0


class Sampler(threading.Thread):
    """Counts each agent's live processes every 50 ms; remembers the worst instant."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: Counter[str] = Counter()
        self.over: list[tuple[str, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for agent, count in agent_processes().items():
                self.peak[agent] = max(self.peak[agent], len(count))
                if len(count) > LIMITS[agent]:
                    self.over.append((agent, len(count)))


def agent_processes() -> dict[str, list[int]]:
    """Live agent processes (not zombies) by agent, told by the tag in their argv."""
    found: dict[str, list[int]] = {name: [] for name in LIMITS}
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            args = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            for name in LIMITS:
                if f"--history-agent={name}" in args:
                    found[name].append(proc.pid)
        except psutil.Error:
            continue
    return found


def _submitter(svc: Services, accepted: list[str], stop: threading.Event) -> None:
    rng = random.Random(7)
    i = 0
    while not stop.wait(SUBMIT_EVERY_SECONDS):
        i += 1
        agent = rng.choice(sorted(LIMITS))
        try:
            eid = submit_execution(svc, agent, f"h{i} sleep={rng.uniform(3, 7):.1f}").execution.id
        except (QueueFull, Exception):  # refused or the database away: nothing was accepted
            continue
        accepted.append(eid)


def _is_agent(proc: psutil.Process) -> bool:
    try:
        return "--history-agent" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _busy_worker(pool: psutil.Process) -> psutil.Process | None:
    """A worker process of the pool that is running an agent now."""
    for proc in pool.children(recursive=True):
        if not _is_agent(proc) and any(_is_agent(c) for c in proc.children()):
            return proc
    return None


def _kill_a_worker(pools: list[subprocess.Popen[bytes]], killed_at: dict[int, float]) -> list[int]:
    """kill -9 of one worker process that runs an agent; its agents that survive it (each
    agent's pid -> when its worker was killed goes into `killed_at`)."""

    def busy() -> psutil.Process | None:
        for pool in pools:
            with contextlib.suppress(psutil.Error):
                if found := _busy_worker(psutil.Process(pool.pid)):
                    return found
        return None

    worker = wait_for(busy, 30, message="a busy worker")
    agents = [c.pid for c in worker.children(recursive=True)]
    worker.kill()
    killed_at.update(dict.fromkeys(agents, time.time()))
    return _orphans_of(agents)


def _kill_a_pool(pools: list[subprocess.Popen[bytes]], killed_at: dict[int, float]) -> list[int]:
    """kill -9 of the newest pool's whole process group; its agents that survive it (as
    `_kill_a_worker`)."""
    pool = pools.pop()
    agents = [c.pid for c in psutil.Process(pool.pid).children(recursive=True) if _is_agent(c)]
    os.killpg(pool.pid, signal.SIGKILL)
    killed_at.update(dict.fromkeys(agents, time.time()))
    return _orphans_of(agents)


def _seen_results(records: list[dict[str, Any]], killed_at: dict[int, float]) -> set[str]:
    """The messages whose agent printed a successful result agx could have read: all but
    those printed less than UNREAD_SECONDS before their worker was killed."""
    return {
        r["message"]
        for r in records
        if r["event"] == "result"
        and not (r["pid"] in killed_at and killed_at[r["pid"]] - r["t"] < UNREAD_SECONDS)
    }


def _freeze(pid: int, seconds: float) -> None:
    """SIGSTOP a process for `seconds` (SIGCONT however this ends)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _orphans_of(killed: list[int]) -> list[int]:
    """Agent processes among `killed`'s descendants still alive 2 s after the kill."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        alive = [p for p in killed if psutil.pid_exists(p) and not _zombie(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_history_with_faults_keeps_every_invariant(
    services, settings, private_redis, tmp_path: Path
):
    own = replace(
        settings,
        redis_url=private_redis.url,
        lease_seconds=LEASE_SECONDS,
        heartbeat_seconds=1.0,
        redispatch_after_seconds=3.0,
    )
    if not own.effective_broker_url.startswith("amqp"):
        own = replace(own, broker_url=private_redis.url)
    with services.Session.begin() as session:
        for name, limit in LIMITS.items():
            session.add(
                Agent(
                    name=name,
                    command=[sys.executable, "-m", "agx.demo_agent", f"--history-agent={name}"],
                    max_parallel_tasks=limit,
                    queue_limit=40,
                    env={"AGX_DEMO_RECORD": str(tmp_path / "history.record")},
                )
            )
    svc = Services(own, pool_size=3)
    procs = Processes(own, tmp_path)
    sampler, stop, accepted = Sampler(), threading.Event(), []
    orphans: list[int] = []
    killed_at: dict[int, float] = {}
    try:
        pools = [procs.workers(threads=4), procs.workers(threads=4)]
        procs.start("reaper", "--interval", "0.5")
        sampler.start()
        submitter = threading.Thread(target=_submitter, args=(svc, accepted, stop), daemon=True)
        submitter.start()
        time.sleep(8)
        for _ in range(ROUNDS):
            orphans += _kill_a_worker(pools, killed_at)
            time.sleep(4)
            _freeze(private_redis.proc.pid, LEASE_SECONDS + 2)
            time.sleep(4)
            with postgres_outage(svc.engine):
                time.sleep(3)
            time.sleep(4)
            orphans += _kill_a_pool(pools, killed_at)
            pools.append(procs.workers(threads=4))
            time.sleep(4)
        stop.set()
        submitter.join(30)

        def settled() -> bool:
            with services.Session() as session:
                rows = session.query(Execution.status).filter(Execution.id.in_(accepted)).all()
            live = [s for (s,) in rows if s in IN_FLIGHT]
            return len(rows) == len(accepted) and not live

        wait_for(settled, 180, 0.5, "every accepted execution settled")
    finally:
        stop.set()
        sampler.done.set()
        procs.stop_all()
        svc.close()
        for pids in agent_processes().values():  # never leave agents to the next test
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    with services.Session() as session:
        rows = {e.id: e for e in session.query(Execution).filter(Execution.id.in_(accepted))}
    records = [json.loads(line) for line in (tmp_path / "history.record").read_text().splitlines()]
    starts = Counter(r["message"] for r in records if r["event"] == "start")
    succeeded = _seen_results(records, killed_at)
    outcomes = Counter(e.status for e in rows.values())
    print(f"\n{len(accepted)} accepted: {dict(outcomes)}; peaks {dict(sampler.peak)}")
    assert len(accepted) >= 20 * ROUNDS, "a steady history"
    assert not sampler.over, f"over an agent's limit: {sampler.over[:5]}"
    assert set(rows) == set(accepted), "nothing accepted was lost"
    assert not [m for m, n in starts.items() if n > 1], "nothing ran twice"
    assert not orphans, "no agent outlived its worker"
    wrong = [
        (e.message, e.error, e.worker_id, str(e.started_at), str(e.heartbeat_at))
        for e in rows.values()
        if e.message in succeeded and e.status != "completed"
    ]
    assert not wrong, f"agents that succeeded, recorded otherwise: {wrong}"
