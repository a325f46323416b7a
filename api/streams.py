"""Live events over SSE (`/api/executions/{id}/events`) and websockets (`/ws/executions/{id}`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request, stream_with_context
from flask_sock import Sock

from api.context import Forbidden, principal, services
from api.follow import follow
from api.hub import Batch, Hub
from shared.errors import InvalidField, NotFound
from shared.models import Execution

bp = Blueprint("streams", __name__)
sock = Sock()


def hub() -> Hub:
    """The app's event hub (one Redis subscription per process)."""
    return current_app.extensions["agx_hub"]


def _visible_execution(execution_id: str) -> Execution:
    who = principal()
    with services().Session() as session:
        row = session.get(Execution, execution_id)
    if row is None or not who.may_see(row.agent_name):
        raise NotFound(f"execution '{execution_id}' does not exist")
    return row


def _after(value: str | None, field: str) -> int:
    if value in (None, ""):
        return 0
    if not value.isdigit() or len(value) > 12:
        raise InvalidField(field, "must be an event id (a whole number)")
    return int(value)


@bp.get("/api/executions/<execution_id>/events")
def events_sse(execution_id: str) -> Any:
    """Server-sent events: replay from Last-Event-ID (or the start), follow live, then `end`."""
    _visible_execution(execution_id)
    if "Last-Event-ID" in request.headers:
        after = _after(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    else:
        after = _after(request.args.get("last_event_id"), "last_event_id")
    stream = follow(services(), hub(), execution_id, after, services().settings.keepalive_seconds)
    return Response(
        stream_with_context(_sse(stream)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(stream: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    """One chunk per batch (one write to the socket), an SSE event per execution event."""
    yield ": connected\n\n"
    last = None
    for batch in stream:
        if not batch:
            yield ": keepalive\n\n"
            continue
        last = batch[-1]
        yield "".join(f"id: {e['id']}\nevent: {e['type']}\ndata: {_dumps(e)}\n\n" for e in batch)
    if last is not None:
        yield f"event: end\ndata: {_dumps({'status': last.get('status')})}\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def check_origin() -> None:
    """Refuse a browser request from a foreign page (same origin or AGX_ALLOWED_ORIGINS)."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    allowed = services().settings.allowed_origins
    own = f"{urlsplit(request.host_url).scheme}://{request.host}"
    if origin != own and origin not in allowed and "*" not in allowed:
        raise Forbidden(f"origin '{origin[:100]}' is not allowed")


@sock.route("/ws/executions/<execution_id>", bp=bp)
def events_ws(ws: Any, execution_id: str) -> None:
    """The SSE events as websocket messages: each a JSON array of events (empty = keepalive),
    then a final {"type": "end", "status": ...}; then the socket closes."""
    after = _after(request.args.get("last_event_id"), "last_event_id")
    last = None
    settings = services().settings
    for batch in follow(services(), hub(), execution_id, after, settings.keepalive_seconds):
        if batch:
            last = batch[-1]
        ws.send(batch.text if isinstance(batch, Batch) else _dumps(batch))
    ws.send(_dumps({"type": "end", "status": last.get("status") if last else None}))
    ws.close()


@bp.before_request
def _guard_websocket() -> None:
    """Websocket upgrades are checked before the handshake: Origin, key, visibility."""
    if request.path.startswith("/ws/"):
        check_origin()
        _visible_execution(request.view_args["execution_id"] if request.view_args else "")
