"""Per-agent slot leases and FIFO waiting lists, each operation one Lua script in Redis.

The only module that knows their Redis layout (docs/architecture.md): everyone else, the
rebuild from PostgreSQL and the reaper included, goes through `Slots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import redis

from shared import keys
from shared.script_batch import ScriptBatch, run_script

_LUA = Path(__file__).parent / "lua"


@cache
def _source(name: str) -> str:
    """A slot script with the shared prelude (Redis's time, the lapsed-lease purge) in front."""
    return (_LUA / "prelude.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()


class Usage(NamedTuple):
    """An agent's slots as Redis holds them now."""

    in_use: int  #: leases not lapsed
    waiting: int  #: executions in the FIFO
    oldest_waiting_us: int | None  #: submission time of the FIFO's head (us since the epoch)


def submitted_us(created_at: datetime) -> int:
    """An execution's FIFO score: its submission time in microseconds since the epoch."""
    return int(created_at.timestamp() * 1_000_000)


def decode_heads(heads: Any) -> list[str]:
    """Execution ids from the release script's answer."""
    return [h.decode() if isinstance(h, bytes) else h for h in heads]


class Lease(NamedTuple):
    """A running execution's lease to restore: cap_seconds of timeout + buffer are left."""

    agent: str
    execution_id: str
    cap_seconds: float


class Waiter(NamedTuple):
    """A pending execution to put back in its agent's FIFO, at its submission time (us)."""

    agent: str
    execution_id: str
    submitted_us: int


@dataclass(frozen=True)
class Admission:
    """The answer to an acquire: admitted, or parked at a 1-based queue position."""

    admitted: bool
    position: int
    needs_rebuild: bool = False


class Slots:
    """Slot leases (invariants 3-5): acquire or park, renew, release and promote."""

    def __init__(
        self,
        client: redis.Redis,
        lease_seconds: float,
        buffer_seconds: float = 300.0,
        renotify_seconds: float = 10.0,
    ):
        self.client = client
        self.renotify_ms = int(renotify_seconds * 1000)
        self.lease_ms = int(lease_seconds * 1000)
        self.buffer_ms = int(buffer_seconds * 1000)
        self._enqueue = client.register_script(_source("enqueue"))
        self._acquire = client.register_script(_source("acquire"))
        self._release = client.register_script(_source("release"))
        self._renew = client.register_script(_source("renew"))
        self._in_flight = client.register_script((_LUA / "in_flight.lua").read_text())

    def enqueue(
        self, agent: str, execution_id: str, submitted_us: int, max_parallel: int
    ) -> tuple[int, bool]:
        """Place a new submission in the agent's FIFO: (queue position, fits a free slot now).

        Only a submission that fits now needs a message; the others are published by the
        release that makes room for them.
        """
        waiter = Waiter(agent, execution_id, submitted_us)
        return self.enqueue_many(agent, [waiter], max_parallel)[0]

    def enqueue_many(
        self, agent: str, waiters: Sequence[Waiter], max_parallel: int
    ) -> list[tuple[int, bool]]:
        """`enqueue` for several submissions of one agent, in one script: their answers in order."""
        args: list[Any] = [agent, max_parallel]
        for waiter in waiters:
            args += [waiter.execution_id, waiter.submitted_us]
        flat = run_script(
            self.client,
            self._enqueue,
            [keys.waiting(agent), keys.agents_index(), keys.slots(agent), keys.notified(agent)],
            args,
        )
        return [(int(flat[i]), bool(flat[i + 1])) for i in range(0, len(flat), 2)]

    def forget_notice(self, agent: str, execution_id: str) -> None:
        """Its message could not be sent: let the next release or reaper sweep send one."""
        self.client.zrem(keys.notified(agent), execution_id)

    def acquire(
        self,
        agent: str,
        execution_id: str,
        max_parallel: int,
        timeout_seconds: float,
        submitted_us: int = 0,
    ) -> Admission:
        """Take a lease if this execution is at the head of the FIFO, else park it there."""
        admitted, position = run_script(
            self.client,
            self._acquire,
            [
                keys.slots(agent),
                keys.lease_caps(agent),
                keys.waiting(agent),
                keys.agents_index(),
                keys.epoch(),
                keys.notified(agent),
            ],
            [
                execution_id,
                agent,
                max_parallel,
                self.lease_ms,
                self._cap_ms(timeout_seconds),
                submitted_us,
            ],
        )
        return Admission(admitted == 1, int(position), needs_rebuild=admitted == -1)

    def _cap_ms(self, timeout_seconds: float) -> int:
        """A lease's hard cap from now: the run's timeout plus the buffer."""
        return int(timeout_seconds * 1000) + self.buffer_ms

    def renew(
        self, agent: str, execution_id: str, max_parallel: int, remaining_seconds: float
    ) -> bool:
        """Extend the lease (or restore it if a slot is free); False: gone, the holder stops."""
        keys_ = [keys.slots(agent), keys.lease_caps(agent)]
        args = [execution_id, self.lease_ms, max_parallel, int(remaining_seconds * 1000)]
        return bool(run_script(self.client, self._renew, keys_, args))

    def release(
        self,
        agent: str,
        execution_id: str,
        max_parallel: int,
        via: ScriptBatch | None = None,
        grant_timeout: float | None = None,
    ) -> list[str]:
        """Drop this execution's lease or waiting entry; return the waiters to publish now.

        With `grant_timeout` (the agent's timeout_seconds) the first waiter that fits is given
        its lease in the same script, as `acquire` would, and comes first in the answer: the
        caller runs it itself, without a message or an acquire. With `via` the script is only
        queued there; decode its result with `decode_heads`.
        """
        keys_ = [
            keys.slots(agent),
            keys.lease_caps(agent),
            keys.waiting(agent),
            keys.notified(agent),
        ]
        args: list[Any] = [execution_id, max_parallel, self.renotify_ms]
        if grant_timeout is not None:
            args += [self.lease_ms, self._cap_ms(grant_timeout)]
        if via is not None:
            via.add(self._release, keys_, args)
            return []
        return decode_heads(run_script(self.client, self._release, keys_, args))

    def heads(self, agent: str, max_parallel: int) -> list[str]:
        """Purge lapsed leases and return the waiters that fit in the free slots."""
        return self.release(agent, "", max_parallel)

    def usage(self, agent: str) -> Usage:
        """Leases not yet lapsed, and waiters with the oldest's submission time (a read only:
        nothing is purged)."""
        now_ms = datetime.now(UTC).timestamp() * 1000
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(keys.slots(agent), f"({now_ms}", "+inf")
        pipe.zcard(keys.waiting(agent))
        pipe.zrange(keys.waiting(agent), 0, 0, withscores=True)
        in_use, waiting, oldest = pipe.execute()
        return Usage(int(in_use), int(waiting), int(oldest[0][1]) if oldest else None)

    def in_flight(self, agent: str) -> int | None:
        """Leases (lapsed ones too, until purged) plus waiters: the agent's executions in
        flight as Redis knows them, in O(1); None while Redis has lost its state (a rebuild is
        due). Submissions use it to tell they are far from the queue limit (one script: a
        pipeline of its three reads cost the client ~10 us more)."""
        keys_ = [keys.slots(agent), keys.waiting(agent), keys.epoch()]
        count = int(run_script(self.client, self._in_flight, keys_, []))
        return None if count < 0 else count

    def position(self, agent: str, execution_id: str) -> int | None:
        """1-based place in the agent's waiting list, or None when not waiting."""
        rank: Any = self.client.zrank(keys.waiting(agent), execution_id)
        return None if rank is None else int(rank) + 1

    def holds(self, agent: str, execution_id: str) -> bool:
        """Whether the execution holds a lease for the agent (a lapsed one until purged)."""
        return self.client.zscore(keys.slots(agent), execution_id) is not None

    def knows(self, agent: str, execution_id: str) -> bool:
        """Whether the execution holds a lease or waits in the agent's FIFO (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zscore(keys.slots(agent), execution_id)
        pipe.zscore(keys.waiting(agent), execution_id)
        return any(score is not None for score in pipe.execute())

    def restore(self, leases: Iterable[Lease], waiters: Iterable[Waiter]) -> None:
        """Put back leases of running executions and FIFO places of pending ones (one round
        trip), as the rebuild from PostgreSQL after Redis lost its data."""
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        pipe = self.client.pipeline(transaction=False)
        for agent, eid, cap_seconds in leases:
            cap = now_ms + max(0, int(cap_seconds * 1000))
            pipe.zadd(keys.slots(agent), {eid: min(now_ms + self.lease_ms, cap)})
            pipe.hset(keys.lease_caps(agent), eid, cap)
            pipe.sadd(keys.agents_index(), agent)
        for agent, eid, submitted in waiters:
            pipe.zadd(keys.waiting(agent), {eid: submitted}, nx=True)
            pipe.sadd(keys.agents_index(), agent)
        pipe.execute()

    def restored(self) -> bool:
        """Whether the state is in place (False once Redis lost its data: admission waits)."""
        return bool(self.client.exists(keys.epoch()))

    def mark_restored(self) -> None:
        """Open admission: the state was rebuilt (or a fresh Redis has nothing to rebuild)."""
        self.client.set(keys.epoch(), datetime.now(UTC).isoformat())

    def lock_restore(self, token: str, seconds: int) -> bool:
        """Take the rebuild lock for at most `seconds`; False when another process holds it."""
        return bool(self.client.set(keys.rebuild_lock(), token, nx=True, ex=seconds))

    def unlock_restore(self, token: str) -> None:
        """Give the rebuild lock back, if it is still the one `token` took."""
        if self.client.get(keys.rebuild_lock()) == token.encode():
            self.client.delete(keys.rebuild_lock())
