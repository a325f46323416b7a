"""REST: listing and reading executions."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import datetime
from typing import Any

import redis
from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.context import principal, require_agent_visible, services
from api.serialize import execution_dict
from api.validation import query_params
from shared.errors import InvalidField, NotFound
from shared.models import Execution
from shared.states import ExecutionStatus, Trigger
from shared.stopping import request_stop
from shared.store import executions
from shared.timefmt import parse_iso

log = logging.getLogger(__name__)
ID_CHARS = re.compile(r"[0-9A-Za-z_-]{1,32}")  #: what an execution id is made of

bp = Blueprint("executions", __name__, url_prefix="/api")


class ListQuery(BaseModel):
    """Filters and paging for execution lists."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, max_length=64)
    status: ExecutionStatus | None = None
    trigger: Trigger | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = Field(None, max_length=200)
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)


@bp.get("/executions")
@query_params(ListQuery)
def list_executions(query: ListQuery) -> Any:
    """Executions, newest first, with filters and a cursor."""
    return jsonify(page_of(query))


@bp.get("/agents/<name>/executions")
@query_params(ListQuery)
def list_agent_executions(name: str, query: ListQuery) -> Any:
    """One agent's executions, newest first."""
    require_agent_visible(name)
    return jsonify(page_of(query.model_copy(update={"agent": name})))


@bp.get("/agents/<name>/executions/<execution_id>")
def get_execution(name: str, execution_id: str) -> Any:
    """The whole record of one execution, with its transcript."""
    who = require_agent_visible(name)
    with services().Session() as session:
        execution = executions.get(session, execution_id)
        if execution is None or execution.agent_name != name:
            raise NotFound(f"execution '{execution_id}' of agent '{name}' does not exist")
        transcript = executions.transcript(session, execution_id)
    return jsonify(
        execution_dict(
            execution,
            who,
            queue_positions([execution]).get(execution.id),
            transcript.content if transcript else "",
        )
    )


def page_of(query: ListQuery) -> dict[str, Any]:
    """A page of the executions the caller may see (the list routes' and pages' body)."""
    who = principal()
    filters = executions.Filters(
        visible=None if who.is_admin else who.agents,
        agent=query.agent,
        status=query.status,
        trigger=query.trigger,
        since=query.since,
        until=query.until,
        q=query.q,
    )
    before = _decode_cursor(query.cursor) if query.cursor else None
    with services().Session() as session:
        rows = executions.page(session, filters, query.limit + 1, before)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    positions = queue_positions(rows)
    return {
        "items": [execution_dict(r, who, positions.get(r.id)) for r in rows],
        "next_cursor": _encode_cursor(rows[-1]) if more and rows else None,
    }


def queue_positions(rows: list[Execution]) -> dict[str, int]:
    """Live queue positions of the pending rows that wait for a slot (none while Redis is
    out of reach: the rows themselves come from PostgreSQL)."""
    waiting = [r for r in rows if r.status == ExecutionStatus.pending.value and r.queued_at]
    slots = services().slots
    try:
        found = {r.id: slots.position(r.agent_name, r.id) for r in waiting}
    except redis.RedisError:
        log.warning("queue positions unavailable: Redis cannot be reached")
        return {}
    return {k: v for k, v in found.items() if v is not None}


def _encode_cursor(row: Execution) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, eid = raw.split("|", 1)
        if not ID_CHARS.fullmatch(eid):
            raise ValueError("not an execution id")
        return parse_iso(created), eid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidField("cursor", "is not a cursor returned by this API") from None


@bp.post("/agents/<name>/executions/<execution_id>/stop")
def stop_execution(name: str, execution_id: str) -> Any:
    """Stop: pending -> cancelled now; running -> the agent's process group is killed."""
    who = require_agent_visible(name)
    row = request_stop(services(), execution_id, name)
    return jsonify(execution_dict(row, who)), 202 if row.status == ExecutionStatus.running else 200
