"""Guards run before every /api view: authenticate first, JSON bodies only, same-site cookies.

Order matters: an unauthenticated caller learns nothing from validation or lookups (every
route but sign-in answers it 401 first), and a call authenticated by the browser's session
cookie only changes state when it comes from the API's own pages.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from api.context import (
    PUBLIC_ENDPOINTS,
    WRITE_METHODS,
    Forbidden,
    principal,
    services,
    session_token,
)
from shared.apikeys import csrf_token
from shared.errors import AgxError

#: Methods whose body must be JSON (none at all is fine too).
BODIES = frozenset({"POST", "PUT", "PATCH"})
CSRF_HEADER = "X-CSRF-Token"


class UnsupportedMediaType(AgxError):
    """A body that is not JSON (a form or text/plain, as a foreign page can send)."""

    status = 415
    code = "unsupported_media_type"


class CsrfRefused(AgxError):
    """A cookie-authenticated write that did not come from this API's own pages."""

    status = 403
    code = "csrf"


def init_app(app: Flask) -> None:
    """Register the /api guard (app-wide, so it runs before any blueprint's own)."""
    app.before_request(guard_api)


def guard_api() -> None:
    """Before any /api view: authenticate, refuse non-JSON bodies, then check CSRF."""
    if not _is_api():
        return
    if request.endpoint in PUBLIC_ENDPOINTS:
        _require_json_body()  # a form posted by a foreign page must not sign in, nor pay
        return
    principal()
    _require_json_body()
    _require_same_origin()


def _is_api() -> bool:
    rule = request.url_rule
    return request.path.startswith("/api/") or (rule is not None and rule.rule.startswith("/api/"))


def _require_json_body() -> None:
    if request.method not in BODIES or request.is_json:
        return
    if not request.mimetype and not _has_body():
        return  # e.g. POST .../stop from the CLI: nothing to parse
    raise UnsupportedMediaType("send the body as JSON, with 'Content-Type: application/json'")


def _has_body() -> bool:
    chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    return bool(request.content_length) or chunked


def _require_same_origin() -> None:
    if request.method not in WRITE_METHODS:  # a cookie-authenticated write: same-origin
        return
    token = session_token()
    if token is None or _same_site(token):
        return  # a bearer header is never sent by a browser on its own
    raise CsrfRefused(
        "a call signed in by cookie must come from this site's pages"
        f" (same Origin, or the '{CSRF_HEADER}' header from POST /api/session)"
    )


def _same_site(token: str) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin_trusted(origin):
            return True
    elif request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "replace")
    return bool(sent) and hmac.compare_digest(sent, csrf_token(token).encode())


def own_origin() -> str:
    """This request's own origin, as a browser would send it in `Origin`."""
    return f"{request.scheme}://{request.host}".lower()


def origin_trusted(origin: str) -> bool:
    """True for the API's own origin or one listed in AGX_ALLOWED_ORIGINS (`*` not counted)."""
    return origin.lower() == own_origin() or origin in services().settings.allowed_origins


def check_origin() -> None:
    """Refuse a browser request from a foreign page (same origin or AGX_ALLOWED_ORIGINS)."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    if not origin_trusted(origin) and "*" not in services().settings.allowed_origins:
        raise Forbidden(f"origin '{origin[:100]}' is not allowed")
