"""Request-scoped access to the app's services and the authenticated caller."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from shared.apikeys import EXECUTION_TOKEN_PREFIX, KeyCache, Principal
from shared.errors import AgxError, NotFound
from shared.models import Agent
from shared.services import Services
from shared.store import agents
from shared.store.keys import authenticate, authenticate_execution, authenticate_session


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
    return bearer_value(request.headers.get("Authorization", ""))


def bearer_value(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header's value."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


#: The browser-session cookie: a random token, nothing derived from the key.
SESSION_COOKIE = "agx_session"


#: Methods that change state: an execution token may not use them on the REST API.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: /api endpoints that take no key: sign-in (a wrong key is its 401), and paid tasks (the
#: payment, or a read token, is the credential). The guard and /openapi.json both read this.
PUBLIC_ENDPOINTS = frozenset({"session.login", "paid.paid_task", "paid.paid_result"})


def principal() -> Principal:
    """The authenticated caller (bearer key or execution token, else session cookie), checked
    once per request."""
    if "principal" not in g:
        token = bearer_token()
        cookie = None if token else request.cookies.get(SESSION_COOKIE)
        found = cached_principal(current_app, token)
        if found is None and (token or cookie):
            with services().Session() as db:
                found = _bearer(db, token) if token else authenticate_session(db, cookie or "")
        if found is None:
            raise Unauthorized(
                "a valid API key is required: send 'Authorization: Bearer <key>'"
                " or sign in with POST /api/session"
            )
        g.principal, g.session_token = found, cookie
    if g.principal.execution_id and request.method in WRITE_METHODS:
        # Agent-to-agent calls go through /mcp, where the call chain is checked.
        raise Forbidden("an execution token may only read the REST API; call agents via /mcp")
    return g.principal


def bearer_principal() -> Principal:
    """The caller of a bearer-only endpoint (/mcp): an API key or an execution token, never a
    browser session's cookie."""
    token = bearer_token()
    found = None
    if token:
        with services().Session() as db:
            found = _bearer(db, token)
    if found is None:
        raise Unauthorized(
            "a valid API key or execution token is required: send 'Authorization: Bearer <key>'"
        )
    return found


def _bearer(db: Session, token: str) -> Principal | None:
    """The principal of a bearer token: an execution token's (never cached: it ends with its
    run), else an API key's (cached for AGX_KEY_CACHE_SECONDS)."""
    if token.startswith(EXECUTION_TOKEN_PREFIX):
        found = authenticate_execution(db, token)
        if found is not None:
            return found
    cache = key_cache(current_app)
    now = time.monotonic()
    found = cache.get(token, now)
    if found is None:
        found = authenticate(db, token)
        if found is not None:
            cache.put(token, found, now)
    return found


def cached_principal(app: Flask, token: str | None) -> Principal | None:
    """The cached principal of an API key, so a busy client's request opens no session."""
    if not token or token.startswith(EXECUTION_TOKEN_PREFIX):
        return None
    return key_cache(app).get(token, time.monotonic())


def key_cache(app: Flask) -> KeyCache:
    """The app's cache of authenticated API keys (AGX_KEY_CACHE_SECONDS, read at first use)."""
    cache = app.extensions.get("agx_keys")
    if cache is None:
        seconds = app.extensions["agx"].settings.key_cache_seconds
        cache = app.extensions.setdefault("agx_keys", KeyCache(seconds))
    return cache


def session_token() -> str | None:
    """The browser-session token that authenticated this request; None for a bearer key."""
    principal()
    return g.session_token


F = TypeVar("F", bound=Callable[..., Any])


def admin_only(view: F) -> F:
    """Decorate a view (above its body parser): 403 for a non-admin key before any parsing."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_admin()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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


def agent_or_404(
    session: Session, name: str, lock: Literal["update", "key share"] | None = None
) -> Agent:
    """The agent (404 when there is none), locked as asked: `update` against concurrent
    changes (re-read under the lock), `key share` only against its deletion."""
    agent = agents.get(session, name, lock)
    if agent is None:
        raise NotFound(f"agent '{name}' does not exist")
    return agent
