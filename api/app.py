"""The Flask app factory."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import psycopg
import redis
from flask import Flask, jsonify
from flask.sessions import SessionInterface
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from api.hub import Hub
from shared.errors import AgxError
from shared.services import Services
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API: REST blueprints, health, OpenAPI; services bound as an extension."""
    app = Flask(__name__)
    settings = settings or (services.settings if services else Settings.from_env())
    services = services or Services(settings.require(), pool_size=20)
    app.extensions["agx"] = services
    app.extensions["agx_hub"] = Hub(services.redis)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024  # bodies are small; 100 KB messages fit
    # Browser sessions are rows (api/session.py), not Flask's signed cookie, which is unused:
    # no request pays for opening one.
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    app.session_interface = _NoFlaskSessions()
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from api import (
        agents,
        chat,
        executions,
        guard,
        health,
        metrics,  # /metrics, and every request counted and timed
        openapi,
        schedules,
        session,
        streams,
    )
    from api.validation import register as guard_input

    metrics.instrument(app)  # first: it times the guards too
    app.register_blueprint(metrics.bp)
    guard.init_app(app)  # before the blueprints' own hooks: authenticate first, always
    guard_input(app)  # then refuse NUL in paths and query strings, on every route
    for module in (agents, chat, executions, health, openapi, schedules, session, streams):
        app.register_blueprint(module.bp)
    from api import activity, mcp  # the activity summary; MCP at /mcp (not under /api)

    for module in (activity, mcp):
        app.register_blueprint(module.bp)
    from api import paid  # x402 paid tasks; checks the facilitator now when configured

    paid.init_app(app, settings)
    from api import pages  # the web pages (GET / leads to /executions); docs/pages.md

    app.register_blueprint(pages.bp)
    _register_errors(app)
    from api.fast import FastSubmit  # POST .../task's success path, before Flask

    app.wsgi_app = FastSubmit(app)  # type: ignore[method-assign]
    return app


class _NoFlaskSessions(SessionInterface):
    """Flask's session is never used: every request gets its null session."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


def _register_errors(app: Flask) -> None:
    @app.errorhandler(Exception)  # AgxError, HTTPException, anything else: error_answer
    def error(exc: Exception) -> Any:
        status, body, headers = error_answer(exc)
        return jsonify(body), status, headers


def error_answer(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of the answer to a request whose handling raised `exc`:
    an AgxError's own status and body, an HTTP error's code, 503 with Retry-After for what a
    retry may cure (`transient_error`), else 500 (logged with its traceback)."""
    if isinstance(exc, AgxError):
        return exc.status, exc.to_dict(), {}
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return exc.code or 500, {"error": {"code": code, "message": exc.description}}, {}
    transient = transient_error(exc)
    if transient is not None:
        log.warning("request failed, the client may retry: %s", exc)
        code, message = transient
        body = {"error": {"code": code, "message": message}}
        return 503, body, {"Retry-After": str(RETRY_AFTER_SECONDS)}
    log.error("unhandled error", exc_info=exc)
    return 500, {"error": {"code": "internal", "message": "internal error"}}, {}


RETRY_AFTER_SECONDS = 1
_CONFLICTS = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)


def transient_error(exc: Exception) -> tuple[str, str] | None:
    """(code, message) for a failure that a retry may cure, None for a bug.

    Two transactions that deadlocked, or a database or Redis out of reach, are not the
    client's fault and not a defect of the request either: 503 with Retry-After. Views
    commit their work in one transaction, so such a failure has stored nothing, except a
    `wait: true` submission that lost the database while waiting (its execution is listed).
    """
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    if isinstance(cause, _CONFLICTS):
        return "busy", "a concurrent change conflicted with this request; retry it"
    if isinstance(cause, psycopg.OperationalError) or isinstance(exc, sa_exc.OperationalError):
        return "unavailable", "the database cannot be reached; retry shortly"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return "unavailable", "Redis cannot be reached; retry shortly"
    return None
