"""Finding the services tests run against: the real ones, or embedded ones on a laptop."""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

IN_CI = bool(os.environ.get("CI"))


def reachable(url: str, default_port: int) -> bool:
    """True when something accepts TCP connections at the URL's host and port."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


@dataclass
class TestServices:
    """URLs of the services this test session uses."""

    database_url: str
    redis_url: str
    amqp_url: str | None  # None: no RabbitMQ here (laptop without it)
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the embedded services this session started."""
        for stop in reversed(self.stoppers):
            stop()


def discover(tmp_home: str) -> TestServices:
    """Real services when reachable; with CI set a missing one is an error, else embedded."""
    db = os.environ.get("AGX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    rd = os.environ.get("AGX_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    mq = os.environ.get("AGX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    missing = [
        name
        for name, url, port in (
            ("PostgreSQL", db, 5432),
            ("Redis", rd, 6379),
            ("RabbitMQ", mq, 5672),
        )
        if not reachable(url, port)
    ]
    if missing and IN_CI:
        pytest.exit(
            f"CI is set but these services are unreachable: {', '.join(missing)}", returncode=3
        )
    found = TestServices(db, rd, None if "RabbitMQ" in missing else mq)
    if "PostgreSQL" in missing or "Redis" in missing:
        from pathlib import Path

        from agx import embedded
        from agx.procs import stop

        home = Path(tmp_home)
        if "PostgreSQL" in missing:
            found.database_url, server = embedded.start_postgres(home / "pgdata")
            found.stoppers.append(lambda: embedded.stop_postgres(server))
        if "Redis" in missing:
            found.redis_url, proc = embedded.start_redis(home / "redis", home / "redis.log")
            found.stoppers.append(lambda: stop(proc, 5))
        print(f"\nusing embedded services for: {', '.join(missing)}")
    if "RabbitMQ" in missing:
        print("\nRabbitMQ unreachable: tests that need it are skipped")
    return found
