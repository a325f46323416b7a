"""Telling the pool's guardian which agent process groups this worker process has running.

`agx workers` starts a guardian in a session of its own, outside the pool's process group:
a `kill -9` of the whole pool does not reach it. Each worker process holds one connection to
it and announces every agent's process group when it starts (`+PGID`) and once it is dead
(`-PGID`). When a connection closes with groups still announced, its worker died: the
guardian SIGKILLs those groups at once, so what the agents started dies with them even when
no subreaper of the pool is left. While the guardian answers, runs are started without a
parent-death signal of their own (`guarded`): it covers the same deaths, and arming the
signal costs a second exec per run.

A group's end is not sent on its own: it waits (at most END_DELAY_SECONDS) to go in the same
write as the next group's start, so a busy worker wakes the guardian once per run, not twice.
Until it is sent the guardian would SIGKILL a dead group's id if the worker died; the id
cannot have been given to a new group in that half second (ids are handed out in a cycle
through pid_max: 32,768 by default, more on most hosts).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)

SOCKET_ENV = "AGX_GROUP_GUARD"  #: the guardian's abstract Unix socket name, set by agx workers
END_DELAY_SECONDS = 0.5  #: longest a group's end waits to share a write with the next start


class GroupRegistry:
    """This process's connection to the guardian (none outside `agx workers`)."""

    def __init__(self, address: str | None):
        self._address = address
        self._sock: socket.socket | None = None
        self._pid = os.getpid()  # a forked child must open a connection of its own
        self._lock = threading.Lock()
        self._ended: list[int] = []  #: groups whose end is not sent yet
        self._flusher_pid = 0  #: the process whose flusher thread runs (a fork has none)

    @classmethod
    def from_env(cls) -> GroupRegistry:
        """The registry for the guardian named in the environment, if any."""
        return cls(os.environ.get(SOCKET_ENV) or None)

    def guarded(self) -> bool:
        """True when the guardian is reachable now: a run started while it is needs no
        parent-death signal of its own (which costs a second exec per run, about 1 ms of CPU),
        since the guardian kills the run's whole group if this worker dies. The guardian never
        writes, so a readable or hung-up connection means it is gone."""
        if self._address is None:
            return False
        with self._lock:
            try:
                sock = self._connection()
                try:
                    sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return True  # nothing to read: the guardian is there
                self._drop()  # end of stream (or data it never sends): it is gone
                return self._connection() is not None  # a guardian listening again
            except OSError:  # reset by a dead guardian, or none listening
                self._drop()
                return False

    def started(self, pgid: int) -> None:
        """An agent's process group now exists (sent at once, with the ends still waiting)."""
        if self._address is None:
            return
        with self._lock:
            self._send_locked(f"+{pgid}\n")

    def ended(self, pgid: int) -> None:
        """An agent's process group was killed whole: nothing of it is left to guard (sent
        with the next start, or within END_DELAY_SECONDS)."""
        if self._address is None:
            return
        with self._lock:
            self._ended.append(pgid)
            if self._flusher_pid != os.getpid():
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_ends, name="group-ends", daemon=True).start()

    def _flush_ends(self) -> None:
        """Send the ends no start took along (the flusher thread: it looks twice per
        END_DELAY_SECONDS, so none waits longer)."""
        while True:
            time.sleep(END_DELAY_SECONDS / 2)
            with self._lock:
                if self._ended:
                    self._send_locked("")

    def _send_locked(self, line: str) -> None:
        """Send the waiting ends, then `line` (the caller holds the lock)."""
        ends = "".join(f"-{pgid}\n" for pgid in self._ended)
        self._ended.clear()
        try:
            self._connection().sendall((ends + line).encode())
        except OSError:  # no guardian (it died): runs get a parent-death signal again
            log.warning("the group guardian cannot be reached", exc_info=True)
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _connection(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():
            assert self._address is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect("\0" + self._address)
            except OSError:
                sock.close()
                raise
            self._sock, self._pid = sock, os.getpid()
        return self._sock
