"""Which agx processes are alive: each long-running one keeps a small Redis hash that expires
unless it renews it, so `agx status` (and metrics) can list workers, schedulers and reapers
across hosts without asking them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from shared import keys

log = logging.getLogger(__name__)

BEAT_SECONDS = 5.0  #: how often a process renews its entry
TTL_SECONDS = 15  #: an entry not renewed for this long is gone: the process is not alive


class Presence:
    """Announce this process as alive (kind, host, pid, start time, what `extra` reports)."""

    def __init__(
        self,
        client: redis.Redis,
        kind: str,
        extra: Callable[[], dict[str, Any]] | None = None,
        beat_seconds: float = BEAT_SECONDS,
    ):
        self.client, self.kind, self.extra = client, kind, extra or dict
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.key = keys.process(kind, f"{self.host}:{self.pid}")
        self.started_at = time.time()
        self.beat_seconds = beat_seconds

    def beat(self) -> None:
        """Write the entry once, with a fresh expiry."""
        fields = {"host": self.host, "pid": self.pid, "started_at": self.started_at}
        fields.update(self.extra())
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(self.key, TTL_SECONDS)
        pipe.execute()

    def start(self) -> threading.Thread:
        """Renew the entry every `beat_seconds` for the life of the process."""
        thread = threading.Thread(target=self._run, name=f"presence-{self.kind}", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError:  # it shows as not alive meanwhile, which is the truth
                log.warning("presence of %s not renewed: Redis out of reach", self.kind)
            time.sleep(self.beat_seconds)


def alive(client: redis.Redis, kind: str) -> list[dict[str, str]]:
    """The live processes of a kind, as their entries hold them, by host and pid."""
    found = []
    for key in client.scan_iter(match=keys.processes(kind), count=500):
        entry: dict[Any, Any] = client.hgetall(key)  # type: ignore[assignment]
        if entry:
            found.append({_text(k): _text(v) for k, v in entry.items()})
    return sorted(found, key=lambda e: (e.get("host", ""), int(e.get("pid", 0))))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
