"""The pages' blueprint: the sign-in gate, error pages, and what every template may use.

Pages only read. Every change (send, stop, chat, schedules, sign-in and out) is a call of
the page's JavaScript to the REST API, which checks the session cookie and the CSRF token
(api/guard.py); so no page route needs a CSRF check of its own.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from flask import Blueprint, redirect, render_template, request
from werkzeug.exceptions import HTTPException

from api.context import Unauthorized, principal, session_token
from shared.apikeys import csrf_token
from shared.errors import AgxError, InvalidField
from shared.timefmt import iso

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

#: Endpoints a visitor may open without signing in.
OPEN = frozenset({"pages.sign_in", "pages.home"})


@bp.before_request
def gate() -> Any:
    """Send a visitor without a valid session (or bearer key) to the sign-in page."""
    if request.endpoint in OPEN:
        return None
    try:
        principal()
    except Unauthorized:
        return redirect("/sign-in?next=" + quote(request.full_path.rstrip("?"), safe="/"))
    return None


@bp.app_template_global()
def viewer() -> Any:
    """The signed-in key (None on the sign-in page)."""
    try:
        return principal()
    except AgxError:
        return None


@bp.app_template_global()
def csrf() -> str:
    """The CSRF token of this browser session, for the page's API calls ('' for a bearer)."""
    try:
        token = session_token()
    except AgxError:
        return ""
    return csrf_token(token) if token else ""


def render_error(status: int, title: str, message: str, **headers: str) -> Any:
    """An error said in words, as a page."""
    body = render_template("error.html", status=status, title=title, message=message)
    return body, status, headers


@bp.errorhandler(AgxError)
def agx_error(exc: AgxError) -> Any:
    """A refused request, as a page (a foreign or missing id is the same 404)."""
    if exc.status == 404:
        return render_error(404, "Not found", str(exc))
    if isinstance(exc, InvalidField):
        return render_error(exc.status, "That address is not valid", str(exc))
    return render_error(exc.status, "Refused", str(exc))


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:
    """An HTTP error raised by a page view."""
    return render_error(exc.code or 500, exc.name, exc.description or "")


@bp.errorhandler(Exception)
def unexpected(exc: Exception) -> Any:
    """PostgreSQL or Redis away: 503 said in words; anything else is a bug (500)."""
    from api.app import RETRY_AFTER_SECONDS, transient_error

    if transient_error(exc) is not None:
        log.warning("page failed, the visitor may retry: %s", exc)
        message = "A database or Redis is out of reach. This page will work again shortly."
        return render_error(
            503, "agx is unavailable", message, **{"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    log.exception("unhandled error in a page")
    return render_error(500, "Something went wrong", "The error was logged.")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/executions"
    return target


@bp.get("/sign-in")
def sign_in() -> Any:
    """The sign-in form (the key is posted by script to POST /api/session, never in a URL)."""
    target = safe_next(request.args.get("next"))
    if viewer() is not None:
        return redirect(target)
    return render_template("sign_in.html", next=target)


@bp.app_template_filter("duration")
def duration(ms: int | None) -> str:
    """Milliseconds for people: 850 ms, 12.4 s, 3 min 05 s, 2 h 01 min."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@bp.app_template_filter("cost")
def cost(usd: float | None) -> str:
    """A cost in US dollars, with the precision small runs need."""
    if usd is None:
        return "—"
    return f"${usd:.2f}" if usd >= 1 else f"${usd:.4f}"


@bp.app_template_filter("first_line")
def first_line(text: str | None, width: int = 120) -> str:
    """The first non-empty line of a message, cut to `width` characters."""
    line = next((s.strip() for s in (text or "").splitlines() if s.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


bp.add_app_template_filter(iso, "iso")
