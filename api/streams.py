"""Live events over SSE (`/api/executions/{id}/events`) and websockets (`/ws/executions/{id}`).

Both replay from an event id (SSE: `Last-Event-ID`, else `?last_event_id=`; websocket:
`?last_event_id=`), follow live, and end with the execution's terminal status, at once when
the client already has every event of a finished run. Everything a stream can be refused for
(key, Origin, visibility, event id, the stream bounds of api/limits.py) is checked before the
stream starts, for a websocket before the upgrade, and answered with the JSON error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from simple_websocket import ConnectionClosed
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from api.context import principal, services
from api.follow import follow, is_terminal
from api.guard import check_origin
from api.hub import Batch, Hub
from api.limits import MAX_CLIENT_MESSAGE_BYTES, SendOnlyServer, StreamLimits, StreamSlot
from shared.errors import AgxError, InvalidField, NotFound, StreamsBusy, TooManyStreams
from shared.models import Execution
from shared.store import executions

bp = Blueprint("streams", __name__)

MAX_EVENT_ID_DIGITS = 12
MAX_ID_LENGTH = 32  #: execution ids are at most this long; a longer one names nothing
WS_PATH = "/ws/executions/"


def hub() -> Hub:
    """The app's event hub (one Redis subscription per process)."""
    return current_app.extensions["agx_hub"]


def limits() -> StreamLimits:
    """The app's stream counts (one per process), made on first use."""
    found = current_app.extensions.get("agx_stream_limits")
    if found is None:
        settings = services().settings
        found = StreamLimits(settings.max_streams_per_key, settings.max_streams)
        found = current_app.extensions.setdefault("agx_stream_limits", found)
    return found


def _visible_execution(execution_id: str) -> Execution:
    who = principal()
    row = None
    if len(execution_id) <= MAX_ID_LENGTH and "\x00" not in execution_id:
        with services().Session() as session:
            row = executions.get(session, execution_id)
    if row is None or not who.may_see(row.agent_name):
        raise NotFound(f"execution '{execution_id[:MAX_ID_LENGTH]}' does not exist")
    return row


def _after(value: str | None, field: str) -> int:
    """The event id a client has (0 for none); only ASCII digits are an id."""
    if value in (None, ""):
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_EVENT_ID_DIGITS:
        raise InvalidField(field, "must be an event id (a whole number)")
    return int(value)


def _requested_after() -> int:
    """The event id to resume after: the Last-Event-ID header, else ?last_event_id=."""
    if "Last-Event-ID" in request.headers:
        return _after(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    return _after(request.args.get("last_event_id"), "last_event_id")


def _end_status(execution_id: str, last: dict[str, Any] | None) -> str | None:
    """The terminal status: from the last event, else (nothing replayed) from the row."""
    if last is not None and is_terminal(last):
        return str(last["status"])
    with services().Session() as session:
        row = executions.get(session, execution_id)
    return row.status if row is not None else None


def _refusal(exc: TooManyStreams | StreamsBusy) -> Any:
    return jsonify(exc.to_dict()), exc.status, {"Retry-After": str(exc.retry_after_seconds)}


@bp.get("/api/executions/<execution_id>/events")
def events_sse(execution_id: str) -> Any:
    """Server-sent events: replay from Last-Event-ID (or the start), follow live, then `end`."""
    _visible_execution(execution_id)
    after = _requested_after()
    try:
        slot = limits().acquire(principal().name)
    except (TooManyStreams, StreamsBusy) as exc:
        return _refusal(exc)
    stream = follow(services(), hub(), execution_id, after, services().settings.keepalive_seconds)
    response = Response(
        stream_with_context(_sse(execution_id, stream, slot)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(slot.release)  # also when the body was never started
    return response


def _sse(execution_id: str, stream: Iterator[list[dict[str, Any]]], slot: StreamSlot) -> Any:
    """One chunk per batch (one write to the socket), an SSE event per execution event."""
    try:
        yield ": connected\n\n"
        last = None
        for batch in stream:
            if not batch:
                yield ": keepalive\n\n"
                continue
            last = batch[-1]
            yield "".join(_sse_event(e) for e in batch)
        yield f"event: end\ndata: {_dumps({'status': _end_status(execution_id, last)})}\n\n"
    finally:
        slot.release()


def _sse_event(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {_dumps(event)}\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@bp.route(WS_PATH + "<execution_id>", websocket=True)
def events_ws(execution_id: str) -> Any:
    """The SSE events as websocket messages: each a JSON array of events (empty = keepalive),
    then a final {"type": "end", "status": ...}; then the socket closes.

    The client may only ping: a data message closes the socket (see api/limits.py).
    """
    try:
        ws = SendOnlyServer(request.environ, max_message_size=MAX_CLIENT_MESSAGE_BYTES)
    except RemoteProtocolError as exc:  # nothing was written yet: an HTTP answer still fits
        raise AgxError(f"not a websocket handshake: {exc}") from None
    try:
        _relay(ws, execution_id, g.stream_after)
        ws.close()
    except (ConnectionClosed, LocalProtocolError, OSError):
        pass  # the client left, or broke the protocol and was closed
    return _Served(ws)


def _relay(ws: SendOnlyServer, execution_id: str, after: int) -> None:
    last = None
    keepalive = services().settings.keepalive_seconds
    for batch in follow(services(), hub(), execution_id, after, keepalive):
        if batch:
            last = batch[-1]
        ws.send(batch.text if isinstance(batch, Batch) else _dumps(batch))
    ws.send(_dumps({"type": "end", "status": _end_status(execution_id, last)}))


class _Served(Response):
    """The response for a socket the view served itself: nothing more to write."""

    def __init__(self, ws: SendOnlyServer):
        super().__init__()
        self.ws = ws

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.ws.mode == "gunicorn":
            raise StopIteration()  # gunicorn then closes the connection, writing nothing
        if self.ws.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


@bp.before_request
def _guard_websocket() -> Any:
    """Websocket upgrades are checked before the handshake: Origin, key, visibility, event id,
    then the stream bounds (the slot is given back when the request ends)."""
    if not request.path.startswith(WS_PATH):
        return None
    check_origin()
    _visible_execution(request.view_args["execution_id"] if request.view_args else "")
    g.stream_after = _after(request.args.get("last_event_id"), "last_event_id")
    try:
        g.stream_slot = limits().acquire(principal().name)
    except (TooManyStreams, StreamsBusy) as exc:
        return _refusal(exc)
    return None


@bp.teardown_request
def _release_websocket_slot(exc: BaseException | None) -> None:
    """A websocket's view runs to the socket's end, so its request ends with it."""
    slot = g.pop("stream_slot", None)
    if slot is not None:
        slot.release()
