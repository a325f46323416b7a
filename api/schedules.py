"""REST: cron schedules of an agent, their history, and Make Repeatable."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.context import agent_or_404, principal, require_agent_visible, services
from api.serialize import fire_dict, schedule_dict
from api.validation import json_body, query_params
from producer.submit import validate_message, validate_model
from scheduler import CronError, FireTimes, ZoneError, parse, zone
from shared.errors import InvalidField, NotFound
from shared.models import Schedule, utcnow
from shared.states import FireOutcome, Overlap
from shared.store import executions, schedules
from shared.store.schedules import recent
from shared.timefmt import iso

bp = Blueprint("schedules", __name__, url_prefix="/api")

MAX_GRACE_SECONDS = 7 * 24 * 3600  #: longest misfire_grace_seconds accepted
HISTORY_LIMIT = 20  #: fires shown by GET /api/schedules/{id}
_TIMING = ("cron", "timezone", "enabled")


class SchedulePatch(BaseModel):
    """Fields that can change on a schedule; all optional (`model: null` clears the model)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="standard 5-field cron, or @hourly/@daily/...",
    )
    timezone: str | None = Field(
        None, min_length=1, max_length=64, description="IANA zone, like Europe/Berlin"
    )
    message: str | None = None
    model: str | None = None
    enabled: bool | None = None
    overlap: Overlap | None = None
    misfire_grace_seconds: int | None = Field(None, ge=0, le=MAX_GRACE_SECONDS)


class ScheduleCreate(SchedulePatch):
    """A new schedule; with `from_execution_id` the message and model default to that run's."""

    cron: str = Field(
        min_length=1,
        max_length=200,  # type: ignore[assignment]
        description="standard 5-field cron, or @hourly/@daily/...",
    )
    timezone: str = Field("UTC", min_length=1, max_length=64)  # type: ignore[assignment]
    enabled: bool = True  # type: ignore[assignment]
    overlap: Overlap = Overlap.skip  # type: ignore[assignment]
    misfire_grace_seconds: int = Field(300, ge=0, le=MAX_GRACE_SECONDS)  # type: ignore[assignment]
    from_execution_id: str | None = Field(None, min_length=1, max_length=32)


def fire_times(cron: str, timezone: str) -> FireTimes:
    """The cron read in its zone, validated by the code that fires it (422 naming the field)."""
    try:
        parsed = parse(cron, allow_seconds=services().settings.cron_seconds)
    except CronError as exc:
        raise InvalidField("cron", str(exc)) from None
    try:
        return FireTimes(parsed, zone(timezone))
    except ZoneError as exc:
        raise InvalidField("timezone", str(exc)) from None


@bp.get("/schedules")
def list_schedules() -> Any:
    """All schedules the caller may see."""
    who = principal()
    with services().Session() as session:
        rows = schedules.all_schedules(session)
        return jsonify({"items": [schedule_dict(s) for s in rows if who.may_see(s.agent_name)]})


class PreviewQuery(BaseModel):
    """A cron and zone to preview, and how many run times to show."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", min_length=1, max_length=64)
    count: int = Field(5, ge=1, le=20)


@bp.get("/schedules/preview")
@query_params(PreviewQuery)
def preview_schedule(query: PreviewQuery) -> Any:
    """The next run times of a cron in a zone, computed by the scheduler's own code."""
    times = fire_times(query.cron, query.timezone)
    found: list[datetime] = []
    at: datetime | None = utcnow()
    while at is not None and len(found) < query.count:
        at = times.next_after(at)
        if at is not None:  # None: the cron never fires again (like 30 February)
            found.append(at)
    tz = zone(query.timezone)
    return jsonify(
        {
            "cron": " ".join(query.cron.split()),
            "timezone": query.timezone,
            "next_runs": [iso(t) for t in found],
            "next_runs_local": [t.astimezone(tz).isoformat() for t in found],
        }
    )


@bp.get("/agents/<name>/schedules")
def list_agent_schedules(name: str) -> Any:
    """One agent's schedules."""
    require_agent_visible(name)
    with services().Session() as session:
        agent_or_404(session, name)
        rows = schedules.all_schedules(session, name)
        return jsonify({"items": [schedule_dict(s) for s in rows]})


@bp.post("/agents/<name>/schedules")
@json_body(ScheduleCreate)
def create_schedule(name: str, body: ScheduleCreate) -> Any:
    """Create a schedule; `from_execution_id` repeats that execution (Make Repeatable)."""
    require_agent_visible(name)
    with services().Session.begin() as session:
        agent_or_404(session, name, "key share")  # a concurrent delete waits for this, or wins
        message, model = _what_to_send(session, name, body)
        times = fire_times(body.cron, body.timezone)
        schedule = Schedule(
            agent_name=name,
            name=body.name or _default_name(message),
            cron=" ".join(body.cron.split()),
            timezone=body.timezone,
            message=message,
            model=model,
            enabled=body.enabled,
            overlap=body.overlap,
            misfire_grace_seconds=body.misfire_grace_seconds,
            created_from_execution_id=body.from_execution_id,
            next_run_at=times.next_after(utcnow()) if body.enabled else None,
        )
        session.add(schedule)
        session.flush()
        data = schedule_dict(schedule)
    return jsonify(data), 201


def _what_to_send(session: Session, agent: str, body: ScheduleCreate) -> tuple[str, str | None]:
    """Message and model: as given, else copied from `from_execution_id`."""
    message, model = body.message, body.model
    if body.from_execution_id is not None:
        source = executions.get(session, body.from_execution_id)
        if source is None or source.agent_name != agent:
            raise InvalidField(
                "from_execution_id", f"no execution '{body.from_execution_id}' of agent '{agent}'"
            )
        message = source.message if message is None else message
        model = model if "model" in body.model_fields_set else source.model
    elif message is None:
        raise InvalidField("message", "is required (or give from_execution_id)")
    return validate_message(message), validate_model(model)


def _default_name(message: str) -> str:
    first_line = message.strip().splitlines()[0]
    return first_line[:60] + ("..." if len(first_line) > 60 else "")


@bp.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str) -> Any:
    """One schedule with its latest fires: when, execution id, or skipped/missed and why."""
    with services().Session() as session:
        schedule = _schedule(session, schedule_id)
        return jsonify(schedule_dict(schedule, recent(session, schedule_id, HISTORY_LIMIT)))


class FiresQuery(BaseModel):
    """Paging through a schedule's history, newest due time first."""

    model_config = ConfigDict(extra="forbid")

    outcome: FireOutcome | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: datetime | None = Field(
        None, description="next_cursor of the previous page: fires due before this time"
    )


@bp.get("/schedules/<schedule_id>/fires")
@query_params(FiresQuery)
def list_fires(schedule_id: str, query: FiresQuery) -> Any:
    """A schedule's whole history, a page at a time: `{items, next_cursor}`."""
    with services().Session() as session:
        _schedule(session, schedule_id)
        fires = recent(session, schedule_id, query.limit + 1, query.cursor, query.outcome)
    page, more = fires[: query.limit], len(fires) > query.limit
    return jsonify(
        {
            "items": [fire_dict(f) for f in page],
            "next_cursor": iso(page[-1].scheduled_for) if more else None,
        }
    )


@bp.patch("/schedules/<schedule_id>")
@json_body(SchedulePatch)
def patch_schedule(schedule_id: str, body: SchedulePatch) -> Any:
    """Change a schedule; pause and resume with `enabled`. Schedulers pick it up within 2 s."""
    changes = body.model_dump(exclude_unset=True)
    for key, value in changes.items():
        if value is None and key != "model":
            raise InvalidField(key, "must not be null")
    with services().Session.begin() as session:
        schedule = _schedule(session, schedule_id, lock=True)
        _apply(schedule, changes)
        session.flush()
        data = schedule_dict(schedule)
    return jsonify(data)


def _apply(schedule: Schedule, changes: dict[str, Any]) -> None:
    """Validate and set the changed fields; a new timing restarts the schedule from now."""
    if "message" in changes:
        validate_message(changes["message"])
    if "model" in changes:
        validate_model(changes["model"])
    if "cron" in changes:
        changes["cron"] = " ".join(changes["cron"].split())
    retimed = any(k in changes and changes[k] != getattr(schedule, k) for k in _TIMING)
    times = (
        fire_times(changes.get("cron", schedule.cron), changes.get("timezone", schedule.timezone))
        if retimed
        else None
    )
    for key, value in changes.items():
        setattr(schedule, key, value)
    if times is not None:  # due times while paused, or under the old cron, are not "missed"
        schedule.next_run_at = times.next_after(utcnow()) if schedule.enabled else None


@bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> Any:
    """Delete a schedule and its history (its executions stay)."""
    with services().Session.begin() as session:
        session.delete(_schedule(session, schedule_id, lock=True))
    return "", 204


def _schedule(session: Session, schedule_id: str, lock: bool = False) -> Schedule:
    schedule = schedules.get(session, schedule_id, lock)
    if schedule is None or not principal().may_see(schedule.agent_name):
        raise NotFound(f"schedule '{schedule_id}' does not exist")
    return schedule
