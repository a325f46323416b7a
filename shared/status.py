"""What the fleet is doing, for `agx status`: agents, live processes, the broker's queue.

Figures come from where they live: in-flight counts, stuck rows and failures from
PostgreSQL, slots and waiting lists from Redis (`Slots.usage`), live processes from their
presence entries (shared/fleet.py), the queue from the broker. `problems` lists what an
operator must look at; `agx status` exits 1 when there is any.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from shared import fleet
from shared.broker import queue_depth
from shared.models import utcnow
from shared.services import Services
from shared.store import agents

#: A running row not heard of for this many leases is stuck (the reaper settles a lost run
#: after one lease; three mean no reaper is doing it).
STUCK_LEASES = 3


@dataclass
class AgentStatus:
    """One agent's slots, queue and latest failure."""

    name: str
    capacity: int
    slots_in_use: int | None  #: None when Redis cannot be read
    running: int
    pending: int
    waiting: int | None  #: in the FIFO (pending rows held for a chat turn are not)
    oldest_pending_seconds: float | None
    stuck: int
    last_failure: dict[str, Any] | None


@dataclass
class Status:
    """The whole picture, and what is wrong with it."""

    agents: list[AgentStatus]
    workers: list[dict[str, str]]
    schedulers: list[dict[str, str]]
    reapers: list[dict[str, str]]
    queue: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for `--json`."""
        return asdict(self)


def collect(services: Services) -> Status:
    """Read every figure once and judge them."""
    settings = services.settings
    stuck_before = utcnow() - timedelta(seconds=settings.lease_seconds * STUCK_LEASES)
    with services.Session() as session:
        rows = agents.overview(session, stuck_before)
    status = Status(
        agents=[_agent(services, row) for row in rows],
        workers=fleet.alive(services.redis, "worker"),
        schedulers=fleet.alive(services.redis, "scheduler"),
        reapers=fleet.alive(services.redis, "reaper"),
        queue=_queue(services),
    )
    status.problems = _problems(status)
    return status


def _agent(services: Services, row: Any) -> AgentStatus:
    in_use: int | None = None
    waiting: int | None = None
    with contextlib.suppress(Exception):  # Redis away: say so, PostgreSQL's figures stand
        in_use, waiting, _ = services.slots.usage(row.name)
    oldest = row.oldest_pending
    age = None if oldest is None else round(time.time() - oldest.timestamp(), 1)
    failure = None
    if row.failed_at is not None:
        failure = {"at": row.failed_at.isoformat(), "error": (row.failure or "")[:200]}
    return AgentStatus(
        name=row.name,
        capacity=row.max_parallel_tasks,
        slots_in_use=in_use,
        running=row.running,
        pending=row.pending,
        waiting=waiting,
        oldest_pending_seconds=age,
        stuck=row.stuck,
        last_failure=failure,
    )


def _queue(services: Services) -> dict[str, Any]:
    settings = services.settings
    try:
        messages, consumers = queue_depth(settings.effective_broker_url, settings.queue)
    except Exception as exc:  # the broker is away: that is the finding
        return {"name": settings.queue, "error": f"broker out of reach: {type(exc).__name__}"}
    return {"name": settings.queue, "messages": messages, "consumers": consumers}


def _problems(status: Status) -> list[str]:
    found = []
    if not status.workers:
        found.append("no worker process is alive")
    if not status.reapers:
        found.append("no reaper is alive: lost runs and lost messages are not recovered")
    queue = status.queue
    if "error" in queue:
        found.append(queue["error"])
    elif queue["consumers"] == 0 and queue["messages"]:
        found.append(f"queue {queue['name']} has {queue['messages']} messages and no consumer")
    for agent in status.agents:
        if agent.stuck:
            found.append(f"agent {agent.name}: {agent.stuck} running rows not heard of (stuck)")
        if agent.slots_in_use is None:
            found.append(f"agent {agent.name}: Redis out of reach")
    return found
