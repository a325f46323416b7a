"""Bounds on live streams, so that no client can hold an API process's threads or memory.

Each SSE or websocket stream holds one of the process's threads (gunicorn gthread, 32 by
default) for as long as it is open. An API key may hold `max_streams_per_key` of them and
the process serves at most `max_streams` in total (`AGX_MAX_STREAMS_PER_KEY`, default 8, and
`AGX_MAX_STREAMS`, default 24): beyond, a new stream is refused before it starts, 429 for
the key and 503 for the process, so short requests and /healthz always find a thread. The
counts are per process; with several API processes each has its own.

A websocket client has nothing to send but pings: a data message of any size closes the
socket (1008), and one is never buffered beyond `MAX_CLIENT_MESSAGE_BYTES` (1009).
"""

from __future__ import annotations

import threading
from collections import Counter

from simple_websocket import Server
from wsproto.events import CloseConnection
from wsproto.frame_protocol import CloseReason

from shared.errors import StreamsBusy, TooManyStreams

#: Longest client message buffered before the socket is closed (control frames are <= 125).
MAX_CLIENT_MESSAGE_BYTES = 1024


class StreamSlot:
    """One open stream's place in the counts; given back once, however the stream ends."""

    def __init__(self, limits: StreamLimits, key: str):
        self._limits, self._key = limits, key
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the place back (a second call does nothing)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._limits._give_back(self._key)


class StreamLimits:
    """Counts this process's open streams, per key and in total, under one lock."""

    def __init__(self, per_key: int, total: int):
        self.per_key, self.total = per_key, total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> StreamSlot:
        """A slot for a new stream of `key`, or TooManyStreams (429) / StreamsBusy (503)."""
        with self._lock:
            if self._open[key] >= self.per_key:
                raise TooManyStreams(
                    f"this API key already has {self._open[key]} live streams open here, the"
                    f" most it may (AGX_MAX_STREAMS_PER_KEY={self.per_key}); close one first"
                )
            if sum(self._open.values()) >= self.total:
                raise StreamsBusy(
                    f"this API process already serves {self.total} live streams, the most it"
                    " may (AGX_MAX_STREAMS); retry shortly"
                )
            self._open[key] += 1
        return StreamSlot(self, key)

    def open_streams(self, key: str | None = None) -> int:
        """Streams open now: of one key, or of every key together."""
        with self._lock:
            return self._open[key] if key is not None else sum(self._open.values())

    def _give_back(self, key: str) -> None:
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]


class SendOnlyServer(Server):  # type: ignore[misc]
    """A websocket server end whose client may only ping: any data message closes it (1008).

    simple-websocket buffers every whole message a client sends until the app reads it; the
    streams never read, so a message is refused as soon as it is complete, and one is never
    held beyond `max_message_size` (simple-websocket closes with 1009 then).
    """

    def _handle_events(self) -> bool:
        keep_going: bool = super()._handle_events()
        if keep_going and self.input_buffer:
            self.input_buffer.clear()
            self.sock.send(
                self.ws.send(
                    CloseConnection(CloseReason.POLICY_VIOLATION, "clients may not send data")
                )
            )
            self.event.set()
            return False
        return keep_going
