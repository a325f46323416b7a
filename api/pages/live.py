"""One event stream per page for the status of the executions it shows.

`GET /live/statuses?ids=a,b,c` (server-sent events) sends `event: status` with the row's
status, times, duration, cost and model each time one of these executions changes status,
then `event: end` once all have ended. It rides on what already exists: the process's one
Redis subscription (api/hub.py) says *when* an execution changed (its status events), and
PostgreSQL, the truth, says *what* it is now. Ids the key may not see are ignored, so they
leak nothing. It counts as a stream of the key (api/limits.py), like the execution streams.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context

from api.context import principal, services
from api.hub import Hub, Subscriber
from api.pages.base import bp
from api.serialize import execution_dict
from api.streams import hub, limits
from shared.apikeys import Principal
from shared.errors import InvalidField, StreamsBusy, TooManyStreams
from shared.states import ExecutionStatus
from shared.store import executions

MAX_IDS = 200  #: executions one page may watch
POLL_SECONDS = 0.2  #: how often the subscriptions are looked at
RECHECK_SECONDS = 10.0  #: PostgreSQL is asked anyway this often (a missed event costs this)
ID = re.compile(r"[0-9A-Za-z_-]{1,32}")
SHOWN = ("id", "status", "started_at", "completed_at", "duration_ms", "cost", "model_used")


def _ids(raw: str) -> list[str]:
    ids = [i for i in raw.split(",") if i]
    if len(ids) > MAX_IDS or not all(ID.fullmatch(i) for i in ids):
        raise InvalidField("ids", f"must be up to {MAX_IDS} execution ids, comma-separated")
    return list(dict.fromkeys(ids))


@bp.get("/live/statuses")
def live_statuses() -> Any:
    """Server-sent status changes of the listed executions the key may see."""
    who = principal()
    ids = _ids(request.args.get("ids", ""))
    try:
        slot = limits().acquire(who.name)
    except (TooManyStreams, StreamsBusy) as exc:
        return exc.to_dict(), exc.status, {"Retry-After": str(exc.retry_after_seconds)}
    body = _stream(who, hub(), ids, services().settings.keepalive_seconds)
    response = Response(
        stream_with_context(body),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(slot.release)
    return response


def _stream(who: Principal, events: Hub, ids: list[str], keepalive: float) -> Iterator[str]:
    """Subscribe first, then read the rows (so nothing is missed), then follow."""
    subs = {i: events.subscribe(i) for i in ids}
    try:
        yield ": connected\n\n"
        sent: dict[str, str] = {}
        watching, due = set(ids), set(ids)
        checked = beat = time.monotonic()
        while watching:
            if not due and time.monotonic() - checked > RECHECK_SECONDS:
                due = set(watching)
            if due:
                checked = time.monotonic()
                for data in _settle(who, due, watching):
                    if sent.get(data["id"]) != data["status"]:
                        sent[data["id"]], beat = data["status"], checked
                        yield f"event: status\ndata: {json.dumps(data)}\n\n"
            if time.monotonic() - beat > keepalive:
                beat = time.monotonic()
                yield ": keepalive\n\n"
            time.sleep(POLL_SECONDS)
            due = {i for i in watching if _changed(subs[i])}
        yield "event: end\ndata: {}\n\n"
    finally:
        for sub in subs.values():
            events.unsubscribe(sub)


def _settle(who: Principal, due: set[str], watching: set[str]) -> list[dict[str, Any]]:
    """The rows of `due`; those ended, gone or not visible leave `watching`."""
    rows = _rows(who, due)
    found = {d["id"] for d in rows}
    watching -= due - found
    watching -= {d["id"] for d in rows if ExecutionStatus(d["status"]).terminal}
    return rows


def _changed(sub: Subscriber) -> bool:
    """True when a status event (or a lag: anything may have happened) came in."""
    changed = sub.lagged
    while (batch := sub.get(0)) is not None:
        changed = changed or any(e.get("type") == "status" for e in batch)
    if sub.lagged:
        sub.clear_lag()
    return changed


def _rows(who: Principal, ids: set[str]) -> list[dict[str, Any]]:
    """What the list shows of these executions, for those the key may see."""
    with services().Session() as session:
        rows = [executions.get(session, i) for i in sorted(ids)]
    visible = [r for r in rows if r is not None and who.may_see(r.agent_name)]
    return [{k: v for k, v in execution_dict(r, who).items() if k in SHOWN} for r in visible]
