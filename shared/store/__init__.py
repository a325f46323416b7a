"""The stores: every read and write of a table goes through one module here.

- `executions` (with transcripts), `agents`, `schedules` (with their fires), `keys` (API
  keys, browser sessions, execution tokens), `payments` (x402), `activity` (the activity
  summary's aggregates).
- Callers never write SQL or build queries; they call a named function of a store.

One access style per kind of caller:

- **Hot paths** (submit, claim, finish, heartbeat, queue marks, the worker's reads) run
  plain SQL on the psycopg driver connection, parsed once: they run for every execution,
  and building them with the ORM, or even running them through SQLAlchemy Core, costs more
  client CPU than the statements themselves (measured: py-spy, and ~90 us per statement for
  Core's execute over psycopg's), on kept-open connections of their own
  (`shared.db.DirectConnections`). These functions take a psycopg connection, or a
  SQLAlchemy Session/Connection whose transaction they then join.
- **Everything else** (the API, the reaper, the scheduler, rebuild, stop, the CLI) runs a
  few statements per request or sweep, where clarity wins: SQLAlchemy ORM/Core on a Session
  the caller owns (so the caller decides the transaction), through the same named functions.
  What a store hands back may be an ORM object (an API view changes it, adds a new one, or
  deletes it within that transaction); the queries themselves are built here only.

"In flight" is defined once: `shared.states.IN_FLIGHT`, which the partial index
ix_executions_in_flight's predicate matches.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine, text

from shared.store import activity, agents, executions, keys, payments, schedules

__all__ = [
    "activity",
    "agents",
    "executions",
    "keys",
    "payments",
    "ping",
    "ping_connection",
    "schedules",
]

_PING = "SELECT 1"


def ping(engine: Engine) -> None:
    """Run the cheapest statement there is: raises when the database cannot answer."""
    with engine.connect() as conn:
        conn.execute(text(_PING))


def ping_connection(conn: psycopg.Connection[Any]) -> None:
    """The same on one psycopg connection (`shared.db.DirectConnections`' idle check)."""
    conn.execute(_PING)
