"""Helpers shared by several test modules: rows as stored, agent processes, schedules."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psutil
from sqlalchemy import Engine, create_engine, select, text

from shared import events
from shared.models import Execution, Schedule, ScheduleFire, Transcript
from shared.states import ExecutionStatus

ZONES = ("UTC", "Europe/Berlin", "America/New_York")
#: cron day-of-week -> Python weekday (Monday = 0); both 0 and 7 are Sunday
WEEKDAYS = {
    "0": 6,
    "1": 0,
    "2": 1,
    "3": 2,
    "4": 3,
    "5": 4,
    "6": 5,
    "7": 6,
    "sun": 6,
    "mon": 0,
    "tue": 1,
    "wed": 2,
    "thu": 3,
    "fri": 4,
    "sat": 5,
}
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


def terminal(status: str) -> bool:
    """True for a status that never changes again."""
    return ExecutionStatus(status).terminal


def stored(services: Any, execution_id: str) -> tuple[Execution | None, Transcript | None]:
    """An execution and its transcript, as stored now."""
    with services.Session() as session:
        return session.get(Execution, execution_id), session.get(Transcript, execution_id)


def finished(services: Any, execution_id: str) -> Execution | None:
    """The execution once it is terminal, else None (for `wait_for`)."""
    with services.Session() as session:
        found = session.get(Execution, execution_id)
        return found if found is not None and terminal(found.status) else None


def grandchild_pid(services: Any, execution_id: str) -> int | None:
    """The pid the demo agent's `grandchild` run reported in its output, once it has."""
    for event in events.read_stream(services.redis, execution_id, 0):
        match = re.search(r"grandchild pid=(\d+)", event.get("line", ""))
        if match:
            return int(match.group(1))
    return None


def gone(pid: int) -> bool:
    """True once the process is dead (a zombie counts: its parent may never reap it here)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def agent_pids(marker: str) -> list[int]:
    """Pids of the agent processes whose command line or AGX_DEMO_RECORD names `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) or marker in (
                proc.info["environ"] or {}
            ).get("AGX_DEMO_RECORD", ""):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def make_schedule(
    services: Any,
    agent: str = "demo",
    cron: str = "* * * * *",
    tz: str = "UTC",
    next_run_at: datetime | None = T0,
    **fields: Any,
) -> str:
    """Store a schedule directly (overlap `allow` unless given); returns its id."""
    values = {"name": "test", "message": "hello", "overlap": "allow", **fields}
    with services.Session.begin() as session:
        found = Schedule(
            agent_name=agent, cron=cron, timezone=tz, next_run_at=next_run_at, **values
        )
        session.add(found)
        session.flush()
        return found.id


def runs(services: Any, schedule_id: str) -> list[Execution]:
    """A schedule's executions, by due time."""
    with services.Session() as session:
        return list(
            session.scalars(
                select(Execution)
                .where(Execution.schedule_id == schedule_id)
                .order_by(Execution.scheduled_for)
            )
        )


def history(services: Any, schedule_id: str) -> list[ScheduleFire]:
    """A schedule's fire records, by due time."""
    with services.Session() as session:
        return list(
            session.scalars(
                select(ScheduleFire)
                .where(ScheduleFire.schedule_id == schedule_id)
                .order_by(ScheduleFire.scheduled_for)
            )
        )


@contextlib.contextmanager
def postgres_outage(engine: Engine) -> Iterator[None]:
    """While inside, the engine's database takes no connection and has none: every session
    to it is terminated. Restored however the block ends."""
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    database = engine.url.database
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
