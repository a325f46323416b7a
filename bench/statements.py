"""PostgreSQL's own CPU per statement: agx's submit, claim and terminal write beside the bare
peer's INSERT and two UPDATEs (bench/bare_peer.py), one statement at a time on one connection,
and agx's submit and terminal write of four rows together (as concurrent submissions, and
runs a worker's threads end at once, are written), per row.

    python bench/statements.py [--count 3000] [--db-url postgresql://.../agx_bench]

Each kind runs --count times, over --count rows (the agent's queue is --count deep while the
claims run); the figure is the backend process's CPU (from /proc) per statement, so neither
the client nor the network counts. It uses the bench database (truncated) and must run on the
database's host.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.bare_peer import TABLE_DDL  # noqa: E402
from bench.measure import fresh_database, libpq_url  # noqa: E402
from shared.models import new_id, utcnow  # noqa: E402
from shared.states import ExecutionStatus  # noqa: E402
from shared.store import executions  # noqa: E402

AGENT = "bench-statements"
OUTCOME = {"response": "hello", "exit_code": 0, "duration_ms": 3, "error": None}


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one PostgreSQL backend so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    conn: psycopg.Connection[Any],
    name: str,
    work: Callable[[Any], Any],
    items: Sequence[Any],
    per: int = 1,
) -> None:
    """Run `work` on each item and print the backend's CPU and the wall time per call (per
    row, for calls that each take `per` rows)."""
    pid = conn.info.backend_pid
    cpu, wall = backend_cpu(pid), time.monotonic()
    for item in items:
        work(item)
    cpu, wall, n = backend_cpu(pid) - cpu, time.monotonic() - wall, len(items) * per
    print(f"{name:<34}{cpu / n * 1e6:>10.0f}{wall / n * 1e6:>10.0f}")


def prepare(conn: psycopg.Connection[Any]) -> None:
    """One agent with room for every row, the peer's table (empty)."""
    conn.execute(
        "INSERT INTO agents (name, command, output, max_parallel_tasks, timeout_seconds,"
        " queue_limit, env, mcp, created_at, updated_at) VALUES (%s, '[\"/bin/sh\"]', 'text',"
        " 1000000, 300, 10000000, '{}', false, now(), now())",
        (AGENT,),
    )
    conn.execute("DROP TABLE IF EXISTS bench_bare_runs")
    conn.execute(TABLE_DDL)


def agx(conn: psycopg.Connection[Any], count: int) -> None:
    """agx's three statements per execution, through its store."""
    rows = _rows(count)
    measure(
        conn,
        "agx submit (insert_if_room)",
        lambda r: executions.insert_if_room(conn, [r], 256, 5),
        rows,
    )
    ids = [row["id"] for row in rows]
    claim = lambda i: executions.claim_returning(conn, i, AGENT, "bench:1:1", uuid.uuid4().hex * 2)  # noqa: E731
    measure(conn, "agx claim (claim_returning)", claim, ids)
    done = ExecutionStatus.completed
    finish = lambda i: executions.finish(conn, i, 1, done, OUTCOME, ("hello", 1, False))  # noqa: E731
    measure(conn, "agx terminal write + transcript", finish, ids)
    fours = _rows(count)
    groups = [fours[k : k + 4] for k in range(0, len(fours) - 3, 4)]
    insert = lambda g: executions.insert_if_room(conn, g, 256, 5)  # noqa: E731
    measure(conn, "agx submit, 4 together (per row)", insert, groups, per=4)
    ids = [row["id"] for group in groups for row in group]
    for i in ids:
        executions.claim_returning(conn, i, AGENT, "bench:1:1", uuid.uuid4().hex * 2)
    runs = [executions.Finish(i, 1, done, OUTCOME, ("hello", 1, False)) for i in ids]
    finishes = [runs[k : k + 4] for k in range(0, len(runs), 4)]
    together = lambda g: executions.finish_together(conn, g)  # noqa: E731
    measure(conn, "agx terminal write, 4 together", together, finishes, per=4)


def _rows(count: int) -> list[dict[str, Any]]:
    """`count` new pending rows of the bench agent."""
    rows = []
    for _ in range(count):
        row = dict.fromkeys(executions.COLUMNS)
        row.update(id=new_id(), agent_name=AGENT, status="pending", triggered_by="manual")
        row.update(message="hello", created_at=utcnow(), attempt=0)
        rows.append(row)
    return rows


def bare(conn: psycopg.Connection[Any], count: int) -> None:
    """The peer's three statements per execution, as bench/bare_peer.py sends them."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    insert = (
        "INSERT INTO bench_bare_runs (id, status, message, created_at)"
        " VALUES (%s, 'pending', %s, %s)"
    )
    measure(
        conn, "bare INSERT", lambda i: conn.execute(insert, (i, "hello", datetime.now(UTC))), ids
    )
    claim = (
        "UPDATE bench_bare_runs SET status = 'running', attempt = attempt + 1, started_at = %s"
        " WHERE id = %s AND status = 'pending' RETURNING message"
    )
    measure(
        conn,
        "bare claim UPDATE",
        lambda i: conn.execute(claim, (datetime.now(UTC), i)).fetchone(),
        ids,
    )
    finish = (
        "UPDATE bench_bare_runs SET status = %s, completed_at = %s, exit_code = %s, output = %s"
        " WHERE id = %s AND status = 'running'"
    )
    args = lambda i: ("completed", datetime.now(UTC), 0, "hello", i)  # noqa: E731
    measure(conn, "bare terminal UPDATE", lambda i: conn.execute(finish, args(i)), ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000, help="statements of each kind")
    p.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_bench")
    args = p.parse_args(argv)
    url = libpq_url(args.db_url)
    if url.rpartition("/")[2] == "test":
        p.error("database `test` belongs to the test suite")
    fresh_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        prepare(conn)
        print(f"{'statement':<34}{'CPU µs':>10}{'wall µs':>10}")
        agx(conn, args.count)
        bare(conn, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
