"""Database engine, the one sessionmaker, and migrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import normalize_database_url

_MIGRATIONS = Path(__file__).parent / "migrations"


#: A pooled connection idle for longer than this is pinged before use (see `make_engine`).
PING_AFTER_IDLE_SECONDS = 1.0


def make_engine(
    url: str, pool_size: int = 10, pre_ping: bool = True, autocommit: bool = False
) -> Engine:
    """Create an engine for a PostgreSQL URL in any accepted form.

    `pre_ping` checks a pooled connection before use when it sat idle for more than
    PING_AFTER_IDLE_SECONDS, and opens a fresh one when the check fails (so a PostgreSQL
    restart costs no request); a connection that was in use a moment ago is handed out as it
    is, so a busy process pays no extra round trip per checkout. `autocommit` suits callers
    whose every write is one statement (the worker): no BEGIN and COMMIT round trips around
    each.
    """
    engine = create_engine(
        normalize_database_url(url),
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        future=True,
    )
    if pre_ping:
        event.listen(engine, "checkin", _stamp_checkin)
        event.listen(engine, "checkout", _ping_if_idle(engine))
    return engine


def _stamp_checkin(_dbapi: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Any:
    """The checkout hook: a connection that sat idle is pinged the way `pool_pre_ping` would
    (the dialect's own ping); one that no longer answers raises DisconnectionError, and the
    pool connects afresh."""

    def check(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in", 0.0) <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi)
        except psycopg.Error as exc:
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the connection did not answer its ping")

    return check


@contextmanager
def driver_connection(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection's own psycopg handle, autocommitting, for the hot single statements
    of submit, claim and finish: SQLAlchemy Core's execute costs ~90 us more client CPU per
    statement than psycopg's (measured). The autocommit setting is restored on return, and a
    connection that broke is dropped from the pool."""
    pooled = engine.raw_connection()
    conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    before = conn.autocommit
    try:
        conn.autocommit = True
        yield conn
    except psycopg.OperationalError:
        if conn.broken:
            pooled.invalidate()
        raise
    finally:
        if not conn.closed:
            conn.autocommit = before  # allowed: autocommit leaves no transaction open
        pooled.close()


class ThreadConnections:
    """One autocommit psycopg connection per thread, kept open: for a worker thread's single
    statements (claim, finish), without a pool's checkout and return around each, which cost
    about a tenth of a worker's own CPU per run (measured). A connection found broken is
    replaced at its thread's next use."""

    def __init__(self, url: str):
        self._conninfo = normalize_database_url(url).replace("+psycopg", "", 1)
        self._local = threading.local()
        self._opened: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection[Any]:
        """This thread's connection (opened on first use, or again after it broke)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._local.conn = psycopg.connect(self._conninfo, autocommit=True)
            with self._lock:
                self._opened = [c for c in self._opened if not c.closed] + [conn]
        return conn

    def close(self) -> None:
        """Close every thread's connection (each thread opens a new one if it goes on)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()


def driver(conn: psycopg.Connection[Any] | Session | Connection) -> psycopg.Connection[Any]:
    """The psycopg connection behind conn (for a Session: the one its transaction is on)."""
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        return conn.connection.driver_connection  # type: ignore[return-value]
    return conn


def one(conn: psycopg.Connection[Any] | Session | Connection, sql: str, params: Any) -> Any:
    """Run sql (psycopg placeholders) and return its first row, with attribute access by
    column name, or None (no row, or a statement that returns none)."""
    with driver(conn).cursor(row_factory=namedtuple_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone() if cur.description else None


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """The sessionmaker used at every edge (view, actor, scheduler job)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database schema to `revision`."""
    command.upgrade(alembic_config(url), revision)
