"""Serving the API with gunicorn's threaded workers (what simple-websocket supports)."""

from __future__ import annotations

import select
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

#: gunicorn refuses, before the app sees them and as text/html (not the API's JSON errors), a
#: request line over this (414), more header fields than this (431) or a longer field (431).
#: These are gunicorn's defaults, set here so that /openapi.json and the README stay true.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190

#: How long a thread that answered a request on a kept-alive connection waits for the next
#: request on it before handing the connection back to the process's poller.
NEXT_REQUEST_SECONDS = 0.005


class ApiWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, except that a thread that answered a request on a kept-alive
    connection serves the client's next request itself when it comes within
    NEXT_REQUEST_SECONDS. gthread hands a kept-alive connection back to its main thread's
    poller after every request, and from there to a pool thread again when the next one
    comes: four thread hand-offs a request, about a fifth of the API's CPU when a service
    sends requests back to back. An idle connection is handed back as before (it holds no
    thread), and a stopping worker serves no further request this way. (gunicorn 27's gthread:
    `handle` answers whether the connection stays open.)"""

    def handle(self, conn: Any) -> Any:
        keep = super().handle(conn)
        while keep is True and self.alive and not conn.is_http2 and _next_request(conn):
            keep = super().handle(conn)
        return keep


def _next_request(conn: Any) -> bool:
    """Whether the connection has, or gets within NEXT_REQUEST_SECONDS, bytes to read: the
    next request, or the client's close (which the next `handle` answers by closing)."""
    if conn.parser.unreader.buf.getvalue():  # read ahead with the previous request
        return True
    poller = select.poll()
    try:
        poller.register(conn.sock, select.POLLIN)
    except (OSError, ValueError):  # the socket was closed under us (a websocket's end)
        return False
    return bool(poller.poll(NEXT_REQUEST_SECONDS * 1000))


class ApiServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code, serving `api.app:create_app()`."""

    def __init__(self, bind: str, workers: int = 1, threads: int = 32):
        self.options = {
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": "agx.serve.ApiWorker",
            "timeout": 0,
            "graceful_timeout": 5,
            "keepalive": 5,
            "accesslog": None,
            "loglevel": "warning",
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS,
            "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            "child_exit": _child_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app

        return create_app()


def _child_exit(_server: Any, worker: Any) -> None:
    """A gunicorn worker exited: its live gauges leave /metrics (its counters stay)."""
    from shared.metrics import process_dead

    process_dead(worker.pid)
