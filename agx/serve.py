"""Serving the API with gunicorn's threaded workers (what simple-websocket supports)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

#: gunicorn refuses, before the app sees them and as text/html (not the API's JSON errors), a
#: request line over this (414), more header fields than this (431) or a longer field (431).
#: These are gunicorn's defaults, set here so that /openapi.json and the README stay true.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190


class ApiServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured in code, serving `api.app:create_app()`."""

    def __init__(self, bind: str, workers: int = 1, threads: int = 32):
        self.options = {
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
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
