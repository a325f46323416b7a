"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.context import services
from shared import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    """Database, Redis and broker are all reachable."""
    checks = {"database": _database, "redis": _redis, "broker": _broker}
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # report, do not crash the probe
            results[name] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in results.values())
    return jsonify({"status": "ok" if ready else "unavailable", "checks": results}), (
        200 if ready else 503
    )


def _database() -> None:
    store.ping(services().engine)


def _redis() -> None:
    services().redis.ping()


def _broker() -> None:
    url = services().settings.effective_broker_url
    if url.startswith(("amqp://", "amqps://")):
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = params.blocked_connection_timeout = 2
        pika.BlockingConnection(params).close()
    else:
        import redis

        redis.Redis.from_url(url, socket_timeout=2).ping()
