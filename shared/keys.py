"""Every Redis key name agx uses, built in one place.

The slot layout (slots, lease_caps, waiting, notified, epoch, rebuild_lock, agents_index) is
read and written by `shared.slots.Slots` only; the others belong to events and control.
"""

from __future__ import annotations

PREFIX = "agx"


def slots(agent: str) -> str:
    """ZSET member=execution_id score=lease expiry (ms since epoch): running leases."""
    return f"{PREFIX}:slots:{{{agent}}}"


def lease_caps(agent: str) -> str:
    """HASH execution_id -> hard lease cap (ms since epoch): timeout + buffer."""
    return f"{PREFIX}:caps:{{{agent}}}"


def waiting(agent: str) -> str:
    """ZSET member=execution_id score=submission time (us): the agent's FIFO waiting list."""
    return f"{PREFIX}:wait:{{{agent}}}"


def notified(agent: str) -> str:
    """ZSET member=execution_id score=ms a message for it was sent: no duplicate promotions."""
    return f"{PREFIX}:notified:{{{agent}}}"


def epoch() -> str:
    """STRING set once per Redis lifetime; its absence means Redis lost its data."""
    return f"{PREFIX}:epoch"


def rebuild_lock() -> str:
    """STRING lock held while one process rebuilds Redis state from PostgreSQL."""
    return f"{PREFIX}:rebuild-lock"


def agents_index() -> str:
    """SET of agent names that have (or had) slots or waiters, for the reaper."""
    return f"{PREFIX}:agents"


def events_channel(execution_id: str) -> str:
    """Pub/sub channel carrying an execution's live events."""
    return f"{PREFIX}:events:{execution_id}"


def events_stream(execution_id: str) -> str:
    """STREAM of an execution's events, for replay to late subscribers."""
    return f"{PREFIX}:stream:{execution_id}"


def control_channel() -> str:
    """Pub/sub channel for cancel requests to workers."""
    return f"{PREFIX}:control"


def process(kind: str, ident: str) -> str:
    """HASH describing one live agx process (worker pool process, scheduler, reaper); it
    expires unless the process renews it (shared/fleet.py)."""
    return f"{PREFIX}:proc:{kind}:{ident}"


def processes(kind: str) -> str:
    """SCAN pattern matching every live process of a kind."""
    return f"{PREFIX}:proc:{kind}:*"
