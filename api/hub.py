"""One Redis subscription per API process, fanned out to the local stream clients.

Each client has a small bounded buffer. A client that falls behind is marked `lagged` and
catches up from the Redis stream instead, so a slow client neither stalls others nor grows
memory, and never loses an event.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any

import redis

from shared import keys

log = logging.getLogger(__name__)

#: Per client; beyond this it catches up from the stream. The batches are shared by every
#: client of an execution (references, not copies), so this bounds memory per execution,
#: and it is large enough (~0.3 s of the fastest agent) that a brief stall of this process
#: does not send every client into the costlier catch-up.
MAX_BUFFERED_EVENTS = 20_000


class Batch(list[dict[str, Any]]):
    """A live batch of events, and the JSON text it was published as (the same text a client
    would get from serialising it: relays send it as is, once parsed for every client)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        super().__init__(json.loads(text))
        self.text = text


class Subscriber:
    """A client's view of one execution's live events."""

    def __init__(self, execution_id: str):
        self.execution_id = execution_id
        self.lagged = False
        self._batches: deque[list[dict[str, Any]]] = deque()
        self._buffered = 0  # events in _batches
        self._cond = threading.Condition()

    def push(self, batch: list[dict[str, Any]]) -> None:
        """Called by the hub thread; never blocks."""
        with self._cond:
            if self._buffered + len(batch) > MAX_BUFFERED_EVENTS:
                self._batches.clear()
                self._buffered = 0
                self.lagged = True
            else:
                self._batches.append(batch)
                self._buffered += len(batch)
            self._cond.notify()

    def get(self, timeout: float) -> list[dict[str, Any]] | None:
        """The next batch, or None after `timeout` seconds (or when lagged: check `lagged`)."""
        with self._cond:
            if not self._batches and not self.lagged:
                self._cond.wait(timeout)
            if self._batches:
                batch = self._batches.popleft()
                self._buffered -= len(batch)
                return batch
            return None

    def clear_lag(self) -> None:
        """Forget the lag once the client has caught up from the stream."""
        with self._cond:
            self.lagged = False
            self._batches.clear()
            self._buffered = 0


class Hub:
    """Pattern-subscribes to every execution's channel once and routes by execution id."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._subs: dict[str, set[Subscriber]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._pubsub: Any = None
        self._prefix = keys.events_channel("")

    def subscribe(self, execution_id: str) -> Subscriber:
        """Start receiving an execution's live events (subscribed before this returns)."""
        sub = Subscriber(execution_id)
        with self._lock:
            self._subs.setdefault(execution_id, set()).add(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="event-hub", daemon=True)
                self._thread.start()
        self._ready.wait(5)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop routing to this client."""
        with self._lock:
            subs = self._subs.get(sub.execution_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.execution_id]

    def close(self) -> None:
        """Stop listening (the thread ends at its next message or error)."""
        self._closed.set()
        if self._pubsub is not None:
            self._pubsub.close()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=False)
                self._pubsub.psubscribe(self._prefix + "*")
                for message in self._pubsub.listen():
                    if message["type"] == "psubscribe":
                        self._ready.set()
                    elif message["type"] == "pmessage":
                        self._route(message["channel"], message["data"])
            except Exception:  # any error of its Redis client (redis-py may raise others
                # than RedisError when a connection is closed under it): it must survive
                if self._closed.is_set():
                    return
                # Redis restarting: clients catch up from the stream once it is back.
                log.warning("event hub lost Redis; reconnecting", exc_info=True)
                self._lag_everyone()
                self._closed.wait(0.5)

    def _route(self, channel: bytes, data: bytes) -> None:
        execution_id = channel.decode()[len(self._prefix) :]
        with self._lock:
            subs = list(self._subs.get(execution_id, ()))
        if subs:
            batch = Batch(data.decode())
            for sub in subs:
                sub.push(batch)

    def _lag_everyone(self) -> None:
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            with sub._cond:
                sub.lagged = True
                sub._cond.notify()
