"""`shared.db.one`: hot statements prepared through libpq, beside psycopg's own statements."""

from __future__ import annotations

import psycopg
import pytest

from shared.db import one


def _deallocate_all_via_psycopg(conn: psycopg.Connection) -> None:
    """Have psycopg prepare a statement of its own, then roll a transaction back: psycopg
    then sends DEALLOCATE ALL, which drops every prepared statement of the connection."""
    for _ in range(6):  # psycopg prepares a query on its fifth run
        conn.execute("SELECT %s::int", (1,))
    with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
        conn.execute("SELECT 1 / %s", (0,))
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_a_statement_runs_prepared_again_after_psycopg_deallocated_them_all(services):
    sql = "SELECT %(a)s::int + %(b)s::int AS total, %(a)s::text AS a"
    with services.connections.connection() as conn:
        assert one(conn, sql, {"a": 1, "b": 2}) == (3, "1")
        named = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
        assert [n for (n,) in named if n.startswith("agx_")], "it ran prepared"
        _deallocate_all_via_psycopg(conn)
        row = one(conn, sql, {"a": 4, "b": 5})
        assert (row.total, row.a) == (9, "4")


def test_within_a_transaction_a_statement_takes_psycopgs_cursor(services):
    """Inside a transaction nothing is prepared by `one` (a statement deallocated there could
    not be prepared again without aborting the transaction), and what it returns is alike."""
    sql = "SELECT %(a)s::int AS a"
    with services.connections.connection() as conn:
        with conn.transaction():
            assert one(conn, sql, {"a": 7}).a == 7
            named = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
            assert not [n for (n,) in named if n.startswith("agx_")]
        assert one(conn, sql, {"a": 8}).a == 8


def test_errors_are_psycopgs_own_and_leave_the_connection_usable(services, make_agent):
    """A refused statement raises the error class psycopg would, with its diagnostics."""
    make_agent("demo")
    sql = "INSERT INTO agents SELECT * FROM agents WHERE name = %(name)s"  # a second one
    with services.connections.connection() as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as caught:
            one(conn, sql, {"name": "demo"})
        assert caught.value.diag.constraint_name == "agents_pkey"
        assert one(conn, "SELECT %(x)s::int AS x", {"x": 1}).x == 1
        assert one(conn, "SELECT 1 WHERE false", {}) is None
        assert one(conn, "SET application_name = 'agx-test'", {}) is None


def test_a_hot_statement_is_planned_once_per_connection(services):
    """The hot connections run each statement on its generic plan, made once: the statements
    of several runs together come in many shapes (one per count), and planning each of them
    for its values five times per connection, as PostgreSQL does by default, cost more
    PostgreSQL CPU than writing the runs together saved."""
    sql = "SELECT count(*) AS n FROM agents WHERE name = %(name)s"
    with services.connections.connection() as conn:
        for name in ("a", "b", "c", "d", "e", "f", "g"):
            assert one(conn, sql, {"name": name}).n == 0
        plans = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE name LIKE 'agx_%%' AND statement LIKE '%%FROM agents WHERE name = $1'"
        ).fetchall()
    assert plans == [(7, 0)]
