"""The guardian of an `agx workers` pool: kills the agent process groups of a worker that died.

Run as `python -m agx.guardian NAME` by the pool, in a session of its own, with a pipe from
the pool on stdin. It listens on the abstract Unix socket NAME; each worker process connects
once and announces its agents' process groups (see workers/groups.py). A connection that
closes with groups still announced belongs to a dead worker: those groups are SIGKILLed at
once (a group's end reaches us at most half a second after it died, too soon for its id to
have been given to another group). The guardian
leaves when the pool is gone (EOF on stdin) and no worker is connected.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys


class Guardian:
    """Accepts worker connections and tracks the groups each one announced."""

    def __init__(self, address: str):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("\0" + address)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin.buffer, selectors.EVENT_READ, "pool")
        self.groups: dict[socket.socket, set[int]] = {}
        self.buffers: dict[socket.socket, bytes] = {}
        self.pool_alive = True

    def run(self) -> None:
        """Serve until the pool is gone and every worker has disconnected."""
        while self.pool_alive or self.groups:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "pool":
                    self._pool_readable()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        self.groups[conn], self.buffers[conn] = set(), b""
        self.selector.register(conn, selectors.EVENT_READ, "worker")

    def _pool_readable(self) -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # EOF: the pool's top process is gone
            self.selector.unregister(sys.stdin.buffer)
            self.pool_alive = False

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            return self._worker_gone(conn)
        lines = (self.buffers[conn] + data).split(b"\n")
        self.buffers[conn] = lines.pop()
        for line in lines:
            pgid = int(line[1:])
            if line.startswith(b"+"):
                self.groups[conn].add(pgid)
            else:
                self.groups[conn].discard(pgid)
        return None

    def _worker_gone(self, conn: socket.socket) -> None:
        for pgid in self.groups.pop(conn):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        del self.buffers[conn]
        self.selector.unregister(conn)
        conn.close()


def main() -> None:
    """Entry point: `python -m agx.guardian NAME`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when we are done
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Guardian(sys.argv[1]).run()


if __name__ == "__main__":
    main()
