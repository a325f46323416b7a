"""Lua scripts run on the calling thread's own Redis connection: one call, or several in one
round trip (`ScriptBatch`).

The hot path of every execution is a handful of script calls (the submission's in-flight
count and FIFO place, the run's lease, its release with its events). Through redis-py's
client each call checks a connection out of the pool and back in and records its
observability metrics, and a pipeline first asks `SCRIPT EXISTS` for every Script it holds.
Here each thread keeps a connection of its own, made with the client's own settings (timeouts,
health checks, retry policy), and sends bare EVALSHAs on it. Measured on a 2-core box with
hiredis: one call 70-79 us of the caller's CPU through `Script.__call__`, 38-50 here; two
scripts in one round trip 80-91 through a pipeline, 43-57 here.

What stays as redis-py does it: a connection error or timeout is retried under the client's
retry policy, reconnecting between tries (the slot scripts tolerate a repeat, as they do
redis-py's own retries), and a connection Redis closed while it sat idle is made anew before
the call, as the pool does before handing one out; an error reply raises as `ResponseError`;
a script Redis no longer knows (it restarted, or its scripts were flushed) is run again
through redis-py, which loads it. A forked child never uses its parent's connection. A
finished thread's connection is closed when the next thread opens one, and all of them by
`close_lanes` (`Services.close`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

Call = tuple[Script, Sequence[Any], Sequence[Any]]  #: a script, its keys, its arguments


_forks = 0  #: forks this process came through: a lane made before a fork is not used after it


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class _Lane:
    """A thread's connection to one client's Redis, and the process and thread that made it."""

    def __init__(self, client: redis.Redis):
        pool = client.connection_pool
        self.conn: Any = pool.connection_class(**pool.connection_kwargs)
        self.forks = _forks  # (a count, not os.getpid(): no system call per script call)
        self.owner = weakref.ref(threading.current_thread())

    def alive(self) -> bool:
        """Whether the thread that made it still runs."""
        owner = self.owner()
        return owner is not None and owner.is_alive()


class _Lanes:
    """One client's lanes: each thread's own, and the list of all (to close them)."""

    def __init__(self) -> None:
        self.mine = threading.local()
        self.all: list[_Lane] = []


_clients: weakref.WeakKeyDictionary[redis.Redis, _Lanes] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _lane(client: redis.Redis) -> Any:
    """The calling thread's connection for `client` (made on first use, and after a fork)."""
    lanes = _clients.get(client)
    if lanes is None:
        with _lock:
            lanes = _clients.setdefault(client, _Lanes())
    lane: _Lane | None = getattr(lanes.mine, "lane", None)
    if lane is None or lane.forks != _forks:
        lane = lanes.mine.lane = _Lane(client)
        with _lock:
            ended = [x for x in lanes.all if x.forks == lane.forks and not x.alive()]
            lanes.all = [x for x in lanes.all if x.forks == lane.forks and x.alive()] + [lane]
        for x in ended:
            x.conn.disconnect()
    return lane.conn


def close_lanes(client: redis.Redis) -> None:
    """Close every thread's connection for `client` (a later call opens a new one)."""
    with _lock:
        lanes = _clients.pop(client, None)
    for lane in lanes.all if lanes is not None else []:
        if lane.forks == _forks:
            lane.conn.disconnect()


def run_script(
    client: redis.Redis, script: Script, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """Run one script in one round trip and return its answer."""
    return run_scripts(client, [(script, keys, args)])[0]


def run_scripts(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run scripts in order in one round trip (independent: no MULTI); their answers in order.
    Raises the first error reply other than an unknown script."""
    conn = _lane(client)
    _ensure_connected(conn)
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]

    def attempt() -> list[Any]:
        conn.send_packed_command(conn.pack_commands(commands))
        answers: list[Any] = []
        for _ in commands:
            try:
                answers.append(conn.read_response())
            except ResponseError as exc:  # the others' answers still follow: read them all
                answers.append(exc)
        return answers

    answers = conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
    for i, answer in enumerate(answers):
        if isinstance(answer, NoScriptError):
            script, keys, args = calls[i]
            answers[i] = script(keys=keys, args=args, client=client)  # loads it, runs it
        elif isinstance(answer, Exception):
            raise answer
    return answers


def _ensure_connected(conn: Any) -> None:
    """What the pool does before handing a connection out: connect it, and make it anew when
    Redis closed it meanwhile (a restart, an idle timeout, a killed client), so a connection
    lost while idle costs no failed call."""
    conn.connect()  # nothing when connected
    try:
        if conn.can_read():
            raise redis.ConnectionError("connection has unread data")
    except (redis.ConnectionError, TimeoutError, OSError):
        conn.disconnect()
        conn.connect()


class ScriptBatch:
    """Queue script calls with `add`, send them with `execute` (one round trip)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._calls: list[Call] = []

    def add(self, script: Script, keys: list[Any], args: list[Any]) -> int:
        """Queue one call; returns its index in `execute`'s answer."""
        self._calls.append((script, keys, args))
        return len(self._calls) - 1

    def execute(self) -> list[Any]:
        """Run everything queued, in order, in one round trip; raise the first error."""
        calls, self._calls = self._calls, []
        return run_scripts(self.client, calls) if calls else []
