"""Browser sessions: trade an API key for an HTTP-only cookie (keys never go in URLs).

The cookie holds a random token whose hash is a row of `browser_sessions`; signing out
revokes the row, so any copy of the cookie stops working at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from api.context import SESSION_COOKIE, Unauthorized, principal, services, session_token
from api.validation import json_body
from shared.apikeys import csrf_token
from shared.store.keys import end_session, start_session

bp = Blueprint("session", __name__, url_prefix="/api/session")

SESSION_LIFETIME = timedelta(days=7)
#: Flask's signed cookie of earlier versions carried the key's hash: cleared when seen.
LEGACY_COOKIE = "session"


class Login(BaseModel):
    """Body of POST /api/session."""

    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, max_length=200)


@bp.post("")
@json_body(Login)
def login(body: Login) -> Any:
    """Start a browser session with an API key; the body carries its CSRF token."""
    replaced = request.cookies.get(SESSION_COOKIE)
    with services().Session.begin() as db:
        started = start_session(db, body.api_key, SESSION_LIFETIME)
        if started is not None and replaced:
            end_session(db, replaced)
    if started is None:
        raise Unauthorized("that API key is not valid")
    token, who = started
    resp = jsonify({"name": who.name, "role": who.role, "csrf_token": csrf_token(token)})
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return _drop_legacy(resp)


@bp.get("")
def current() -> Any:
    """Who is signed in, and the session's CSRF token (a page reloaded may ask again)."""
    who, token = principal(), session_token()
    body: dict[str, Any] = {"name": who.name, "role": who.role}
    if token:
        body["csrf_token"] = csrf_token(token)
    return jsonify(body)


@bp.delete("")
def logout() -> Any:
    """End the browser session server-side and clear its cookie."""
    token = session_token()
    if token:
        with services().Session.begin() as db:
            end_session(db, token)
    resp = Response(status=204)
    resp.delete_cookie(
        SESSION_COOKIE, path="/", secure=request.is_secure, httponly=True, samesite="Lax"
    )
    return _drop_legacy(resp)


def _drop_legacy(resp: Response) -> Response:
    if LEGACY_COOKIE in request.cookies:
        resp.delete_cookie(LEGACY_COOKIE, path="/")
    return resp
