"""Serving the API with gunicorn's threaded workers (what flask-sock supports)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


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
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app

        return create_app()
