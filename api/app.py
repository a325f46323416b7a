"""The Flask app factory."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Flask, jsonify
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
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    # Several API processes must share AGX_SECRET_KEY for session cookies to work across them.
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from api import agents, executions, health, openapi, schedules, session, streams

    for module in (agents, executions, health, openapi, schedules, session, streams):
        app.register_blueprint(module.bp)
    streams.sock.init_app(app)
    _register_errors(app)
    return app


def _register_errors(app: Flask) -> None:
    @app.errorhandler(AgxError)
    def agx_error(exc: AgxError) -> Any:
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify({"error": {"code": code, "message": exc.description}}), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error")
        return jsonify({"error": {"code": "internal", "message": "internal error"}}), 500
