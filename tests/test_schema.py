"""The schema: the models and the migrations describe the same tables, both ways."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.db import alembic_config
from shared.models import Base


def test_the_models_match_the_migrations(services):
    with services.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_every_migration_downgrades_and_upgrades_again(settings):
    """On a scratch database: head, all the way down, and up again, with the same result."""
    url = make_url(settings.database_url)
    name = f"agx_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    scratch = url.set(database=name).render_as_string(hide_password=False)
    try:
        config = alembic_config(scratch)
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        command.upgrade(config, "head")
        engine = create_engine(scratch)
        try:
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _plans(conn, sql: str, params: dict) -> list[str]:
    """The plan's lines, as planned for these values and as a prepared statement's generic plan
    (psycopg prepares a statement it runs often)."""
    plans = []
    for mode in ("force_custom_plan", "force_generic_plan"):
        with conn.transaction():
            conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            plans.append([row[0] for row in conn.execute("EXPLAIN " + sql, params)])
    return [line for plan in plans for line in plan]


def _store_executions(conn, agent: str, status: str, count: int) -> list[str]:
    """Store `count` executions of the agent in this status at once; their ids in order."""
    from shared.models import new_id, utcnow
    from shared.store import executions as store

    now = utcnow()
    rows = [
        {column: None for column in store.COLUMNS}
        | {"id": new_id(), "agent_name": agent, "status": status, "attempt": 0}
        | {"triggered_by": "manual", "message": "m", "created_at": now}
        for _ in range(count)
    ]
    store.insert_many(conn, rows)
    return [row["id"] for row in rows]


def test_writes_to_one_execution_find_it_by_primary_key_at_any_depth(services, make_agent):
    """A claim and a terminal write (one run's, or eight together), a heartbeat and a parking
    stamp read their rows, however many executions are in flight: with the agent's 600 queued
    and 200 running, on the statistics of an emptied table, each plan (for its values, and
    generic) goes in by the primary key."""
    from shared.models import utcnow
    from shared.store import executions as store

    make_agent("deep")
    now = utcnow()
    with services.connections.connection() as conn:
        ids = _store_executions(conn, "deep", "pending", 800)
        for execution_id in ids[:200]:
            store.claim_returning(conn, execution_id, "deep", "w", None)
        target = ids[400]
        finishes = {"now": now, "stopped": "s"}
        for k, execution_id in enumerate([target, *ids[1:8]]):
            finishes |= {f"{name}_{k}": None for name in store.OUTCOME_FIELDS}
            finishes |= {f"id_{k}": execution_id, f"attempt_{k}": 1, f"status_{k}": "completed"}
            finishes |= {f"content_{k}": "t", f"line_count_{k}": 1, f"truncated_{k}": False}
        claims = {"now": now}
        for k, execution_id in enumerate([target, *ids[201:208]]):
            claims |= {f"id_{k}": execution_id, f"agent_{k}": "deep", f"worker_{k}": "w"}
            claims |= {f"token_hash_{k}": None}
        writes = {
            store._runs_sql(1, store._CLAIM): claims,  # one run's claim
            store._runs_sql(8, store._CLAIM): claims,  # eight runs' together
            store._runs_sql(1, store._FINISH, store._SAVE_TRANSCRIPT): finishes,  # terminal writes
            store._runs_sql(8, store._FINISH, store._SAVE_TRANSCRIPT): finishes,
            store._HEARTBEAT: {"id": target, "attempt": 1, "now": now},
            store._QUEUED: {"id": target, "now": now},
        }
        for sql, params in writes.items():
            plan = _plans(conn, sql, params)
            scans = [line for line in plan if "Scan" in line and " on executions" in line]
            assert scans and all("using executions_pkey" in line for line in scans), "\n".join(
                [sql, *plan]
            )


def test_a_conversations_last_turn_is_read_through_the_session_indexes(services, make_agent):
    """Finding a conversation's latest execution never walks the agent's history: with 800
    executions of the agent and none in the conversation (a new chat), each plan reads the
    session indexes, not the agent's executions by time."""
    from shared.store import executions as store

    make_agent("talker")
    with services.connections.connection() as conn:
        _store_executions(conn, "talker", "completed", 800)
        plan = _plans(conn, store._LAST_TURN, {"agent": "talker", "session": "new"})
        scans = " ".join(line for line in plan if "Scan" in line)
        assert "ix_executions_chat_session" in scans, plan
        assert "ix_executions_claude_session" in scans, plan
        assert "ix_executions_agent_created" not in scans, plan
        assert store.last_turn(conn, "talker", "new") is None
