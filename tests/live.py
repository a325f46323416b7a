"""Clients for live events in tests: a minimal SSE reader and a websocket reader."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import websocket


def sse_events(
    url: str,
    key: str,
    last_event_id: int | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Read an SSE stream to its `end` (or `stop_after` events); returns (events, end)."""
    req = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    )
    if last_event_id is not None:
        req.add_header("Last-Event-ID", str(last_event_id))
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        kind, data = None, None
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and kind:
                if kind == "end":
                    return events, data
                events.append(data)  # type: ignore[arg-type]
                kind, data = None, None
                if stop_after is not None and len(events) >= stop_after:
                    return events, None
    return events, None


class WsReader(threading.Thread):
    """Reads a websocket to its end message in the background."""

    def __init__(self, url: str, header: list[str]):
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, header=header, timeout=60)
        self.events: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None
        self.start()

    def run(self) -> None:
        while True:
            message = json.loads(self.ws.recv())
            if isinstance(message, list):  # a batch of events; empty is a keepalive
                self.events.extend(message)
                continue
            assert message["type"] == "end"
            self.end = message
            self.ws.close()
            return
