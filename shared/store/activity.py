"""An agent's activity summary, computed in PostgreSQL: counts by status and by trigger,
success rate, cost and duration figures over the last 24 h and 7 d, and what runs now.

Three statements. One scan of the agent's last 7 days (ix_executions_agent_created) hashes
it three ways at once (GROUPING SETS: by status, by trigger, and whole), each aggregate twice:
for 7 d, and with a FILTER for 24 h. One more scan sorts the durations for the p95s (an
ordered-set aggregate in the first would make it sort for every set). One reads the in-flight
index and the newest row. Windows count executions by `created_at`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.models import utcnow
from shared.states import ExecutionStatus, Trigger
from shared.store.executions import IN_FLIGHT_SQL

#: The windows of a summary: label -> (length, the suffix of its columns in the statements).
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "24h": (timedelta(hours=24), "day"),
    "7d": (timedelta(days=7), "week"),
}
#: Each figure of a window: (aggregate, the rows it counts besides the window's, or None).
_FIGURES: dict[str, tuple[str, str | None]] = {
    "n": ("count(*)", None),
    "completed": ("count(*)", "status = 'completed'"),
    "failed": ("count(*)", "status = 'failed'"),
    "cost_total": ("sum(cost)", None),
    "cost_average": ("avg(cost)", None),
    "duration_average": ("avg(duration_ms)", None),
    "p95": ("percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)", None),
}
_IN_DAY = "created_at >= :day"  #: the statements select the week; the day is a FILTER


def _aggregates(names: tuple[str, ...]) -> str:
    """A select list: each named figure for the week (`<name>_week`) and the day (`_day`)."""
    found = []
    for suffix in ("week", "day"):
        for name in names:
            sql, condition = _FIGURES[name]
            conditions = [c for c in (condition, _IN_DAY if suffix == "day" else None) if c]
            where = f" FILTER (WHERE {' AND '.join(conditions)})" if conditions else ""
            found.append(f"{sql}{where} AS {name}_{suffix}")
    return ", ".join(found)


_OF_THE_WEEK = " FROM executions WHERE agent_name = :agent AND created_at >= :week"
_GROUPED = text(
    "SELECT GROUPING(status) AS no_status, GROUPING(triggered_by) AS no_trigger,"
    " status, triggered_by, "
    + _aggregates(("n", "completed", "failed", "cost_total", "cost_average", "duration_average"))
    + _OF_THE_WEEK
    + " GROUP BY GROUPING SETS ((status), (triggered_by), ())"
)
_P95 = text(f"SELECT {_aggregates(('p95',))}{_OF_THE_WEEK} AND duration_ms IS NOT NULL")

# The in-flight counts read the partial index ix_executions_in_flight (same predicate).
_NOW = text(
    f"""
    SELECT live.running, live.waiting,
           last.id, last.status, last.triggered_by, last.created_at, last.completed_at
    FROM (SELECT count(*) FILTER (WHERE status = 'running') AS running,
                 count(*) FILTER (WHERE status = 'pending') AS waiting
          FROM executions WHERE agent_name = :agent AND {IN_FLIGHT_SQL}) AS live
    LEFT JOIN LATERAL (
      SELECT id, status, triggered_by, created_at, completed_at FROM executions
      WHERE agent_name = :agent ORDER BY created_at DESC, id DESC LIMIT 1
    ) AS last ON true
    """
)


@dataclass
class Window:
    """One window's figures (durations in ms, costs in USD; None where nothing counts)."""

    since: datetime
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_trigger: dict[str, int] = field(default_factory=dict)
    #: completed / (completed + failed): cancelled runs were stopped, neither won nor lost
    success_rate: float | None = None
    total_cost: Decimal | None = None
    average_cost: Decimal | None = None
    average_duration_ms: float | None = None
    p95_duration_ms: float | None = None


@dataclass
class Activity:
    """An agent's activity: the windows by label, and the present moment."""

    agent: str
    at: datetime
    windows: dict[str, Window]
    running_now: int = 0
    waiting_now: int = 0
    last_execution: dict[str, Any] | None = None


def summary(session: Session, agent: str, now: datetime | None = None) -> Activity:
    """The agent's activity as of `now` (default: the present)."""
    now = now or utcnow()
    windows = {
        label: Window(
            since=now - span,
            by_status={s.value: 0 for s in ExecutionStatus},
            by_trigger={t.value: 0 for t in Trigger},
        )
        for label, (span, _) in WINDOWS.items()
    }
    params = {"agent": agent, "day": windows["24h"].since, "week": windows["7d"].since}
    grouped = session.execute(_GROUPED, params).all()
    p95 = session.execute(_P95, params).one()
    for label, (_, suffix) in WINDOWS.items():
        for row in grouped:
            _fold(windows[label], row, suffix)
        windows[label].p95_duration_ms = _float(getattr(p95, f"p95_{suffix}"))
    current = session.execute(_NOW, {"agent": agent}).one()
    last = None
    if current.id is not None:
        last = {
            "id": current.id,
            "status": current.status,
            "triggered_by": current.triggered_by,
            "created_at": current.created_at,
            "completed_at": current.completed_at,
        }
    return Activity(agent, now, windows, current.running, current.waiting, last)


def _fold(window: Window, row: Any, suffix: str) -> None:
    """Put one grouped row into a window: a status count, a trigger count, or the figures."""

    def figure(name: str) -> Any:
        return getattr(row, f"{name}_{suffix}")

    if not row.no_status:
        window.by_status[row.status] = figure("n")
    elif not row.no_trigger:
        window.by_trigger[row.triggered_by] = figure("n")
    else:
        window.total = figure("n")
        decided = figure("completed") + figure("failed")
        window.success_rate = figure("completed") / decided if decided else None
        window.total_cost, window.average_cost = figure("cost_total"), figure("cost_average")
        window.average_duration_ms = _float(figure("duration_average"))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
