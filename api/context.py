"""Request-scoped access to the app's services and the authenticated caller."""

from __future__ import annotations

from flask import current_app, g, request, session

from shared.apikeys import Principal, authenticate, authenticate_hash
from shared.errors import AgxError, NotFound
from shared.services import Services


class Unauthorized(AgxError):
    """No valid API key was presented."""

    status = 401
    code = "unauthorized"


class Forbidden(AgxError):
    """The key is valid but may not do this."""

    status = 403
    code = "forbidden"


def services() -> Services:
    """The Services object bound to the current app."""
    return current_app.extensions["agx"]


def bearer_token() -> str | None:
    """The bearer token from the Authorization header (never from the URL)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def principal() -> Principal:
    """The authenticated caller, checked once per request."""
    if "principal" not in g:
        token = bearer_token()
        found = None
        if token:
            with services().Session() as db:
                found = authenticate(db, token)
        elif session.get("key_hash"):
            with services().Session() as db:
                found = authenticate_hash(db, session["key_hash"])
        if found is None:
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")
        g.principal = found
    return g.principal


def require_admin() -> Principal:
    """The caller, who must hold an admin key."""
    who = principal()
    if not who.is_admin:
        raise Forbidden("this needs an admin API key")
    return who


def require_agent_visible(name: str) -> Principal:
    """The caller, who must be allowed to see agent `name` (else 404, so names do not leak)."""
    who = principal()
    if not who.may_see(name):
        raise NotFound(f"agent '{name}' does not exist")
    return who
