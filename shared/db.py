"""Database engine, the one sessionmaker, and migrations."""

from __future__ import annotations

import functools
import re
import time
import weakref
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
from alembic import command
from alembic.config import Config
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
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


class DirectConnections:
    """A small LIFO pool of autocommit psycopg connections, opened on first need and kept, for
    the hot single statements of submit, claim and finish. Against a checkout from
    SQLAlchemy's pool around psycopg's own connection it saves ~45 us of client CPU per
    submission (measured: 325 us, 285 with it), and against SQLAlchemy Core's execute ~90 us
    more per statement. LIFO: a busy process keeps reusing its few warm connections, whose
    statements psycopg has prepared. Each statement runs on its generic plan, made once per
    connection (plan_cache_mode): these statements find their rows by key whatever their
    values (tests/test_schema.py checks the plans), and the statements of several runs or
    submissions together come in one shape per count, which PostgreSQL by default planned for
    its values five times each per connection (PostgreSQL's CPU per execution in
    bench/throughput.py: 0.47-0.50 ms that way, 0.40-0.45 this way).

    `ping`: a connection idle for more than PING_AFTER_IDLE_SECONDS is checked before use and
    replaced when it no longer answers (a PostgreSQL restart costs no request: API and
    producers). Without it (workers) a caller retries once on a fresh connection instead.
    A connection found broken is dropped with every idle one (they were opened before it broke,
    as a restart breaks them all). Open it after any fork: connections are
    not for sharing between processes."""

    def __init__(self, url: str, ping: bool = True):
        self._conninfo = normalize_database_url(url).replace("+psycopg", "", 1)
        self._ping = ping
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  #: (conn, idle since)
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for this thread until the block ends (then back to the pool)."""
        conn = self._take()
        try:
            yield conn
        finally:
            if conn.broken:  # PostgreSQL restarted, likely: the idle ones may be dead too
                self._drop_idle()
            if self._closed or conn.closed or conn.broken:
                conn.close()
            else:
                self._idle.append((conn, time.monotonic()))

    def _take(self) -> psycopg.Connection[Any]:
        while True:
            try:
                conn, since = self._idle.pop()  # atomic: no lock needed
            except IndexError:
                conn = psycopg.connect(self._conninfo, autocommit=True)
                conn.execute("SET plan_cache_mode = force_generic_plan")
                return conn
            if not self._ping or time.monotonic() - since <= PING_AFTER_IDLE_SECONDS:
                return conn
            from shared.store import ping_connection  # the store imports this module

            try:
                ping_connection(conn)
                return conn
            except psycopg.Error:
                conn.close()  # it no longer answers: try the next one, or a new one

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        self._closed = True
        self._drop_idle()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def driver(conn: psycopg.Connection[Any] | Session | Connection) -> psycopg.Connection[Any]:
    """The psycopg connection behind conn (for a Session: the one its transaction is on)."""
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        return conn.connection.driver_connection  # type: ignore[return-value]
    return conn


def one(conn: psycopg.Connection[Any] | Session | Connection, sql: str, params: Any) -> Any:
    """Run sql (`%(name)s` placeholders, `params` a mapping) and return its first row, with
    attribute access by column name, or None (no row, or a statement that returns none).

    On an autocommit connection outside any transaction (the hot statements' connections),
    the statement runs prepared through libpq's own calls with psycopg's adapters, without
    psycopg's cursor layer: a claim cost its worker 165 us of CPU that way, 99 this way
    (measured, bench/executor_split.py). Within a transaction psycopg's cursor runs it: there
    a statement psycopg's rollback deallocated (it drops every prepared statement of the
    connection) could not be prepared again without aborting the transaction."""
    pg = driver(conn)
    if pg.autocommit and pg.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        return _Prepared.of(pg).run(sql, params)
    with pg.cursor(row_factory=namedtuple_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone() if cur.description else None


class _Statement(NamedTuple):
    """A statement in libpq's placeholders ($1...), the names of its parameters in order."""

    sql: bytes
    names: tuple[str, ...]

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(sql: str) -> _Statement:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        return _Statement(_PLACEHOLDER.sub(number, sql).encode(), tuple(names))


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class _Prepared:
    """One connection's statements prepared by `one` (named agx_N, beside psycopg's own), and
    the adapters that dump parameters and load rows. One thread at a time, like the
    connection."""

    _of: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Prepared] = weakref.WeakKeyDictionary()

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self.names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}  #: (sql, types) -> name
        self.rows: dict[bytes, Any] = {}  #: sql -> its row type (a namedtuple of its columns)

    @classmethod
    def of(cls, conn: psycopg.Connection[Any]) -> _Prepared:
        prepared = cls._of.get(conn)
        if prepared is None:
            prepared = cls._of[conn] = cls(conn)
        return prepared

    def run(self, sql: str, params: Any) -> Any:
        statement = _Statement.of(sql)
        adapt = Transformer(self.conn)
        values = [params[name] for name in statement.names]
        dumped = adapt.dump_sequence(values, [PyFormat.AUTO] * len(values))
        types = tuple(adapt.types or ())
        try:
            result = self._execute(statement.sql, types, dumped, adapt.formats)
        except psycopg.errors.InvalidSqlStatementName:  # psycopg's DEALLOCATE ALL after a
            self.names.clear()  # rollback on this connection
            result = self._execute(statement.sql, types, dumped, adapt.formats)
        if result.status != pq.ExecStatus.TUPLES_OK or not result.ntuples:
            return None
        adapt.set_pgresult(result)
        return adapt.load_row(0, self._row_type(statement.sql, result))

    def _execute(
        self, sql: bytes, types: tuple[int, ...], dumped: Any, formats: Any
    ) -> pq.abc.PGresult:
        pg = self.conn.pgconn
        name = self.names.get((sql, types))
        if name is None:
            name = f"agx_{len(self.names)}".encode()
            self._check(pg.prepare(name, sql, types))
            self.names[(sql, types)] = name
        return self._check(pg.exec_prepared(name, dumped, formats))

    def _check(self, result: pq.abc.PGresult) -> pq.abc.PGresult:
        if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return result
        if self.conn.pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(self.conn.pgconn.get_error_message())
        raise psycopg.errors.error_from_result(result, self.conn.info.encoding)

    def _row_type(self, sql: bytes, result: pq.abc.PGresult) -> Any:
        row = self.rows.get(sql)
        if row is None:
            columns = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            row = self.rows[sql] = namedtuple("Row", columns, rename=True)._make  # type: ignore[misc, attr-defined]
        return row


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
