"""Time the activity summary (GET /api/agents/{name}/activity) on 100,000 executions.

    python bench/activity.py [--count 100000 --runs 50 --db-url postgresql://...]

Two layouts of --count executions, each timed --runs times (after one warm-up run) through
`shared.store.activity.summary`, the function the route and the MCP tool call:

* spread: 10 agents, created over the last 30 days (the agent measured holds a tenth);
* one agent: every execution on the agent measured, all within the last 7 days (the worst
  case: both windows aggregate every row).

Statuses, triggers, costs and durations are mixed (a few running and pending). Database
`agx_activity_bench` (created, schema rebuilt each run). Target: p50 under 50 ms for the
spread layout; the one-agent layout is printed for what it costs (every row is aggregated,
and its durations sorted, so it grows with the agent's week: about 0.2 s on a small VM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.measure import ensure_database, libpq_url, with_database  # noqa: E402
from shared.db import migrate, normalize_database_url  # noqa: E402
from shared.store import activity  # noqa: E402

TARGET_MS = 50.0
AGENT = "agent-0"

_AGENTS = (
    "INSERT INTO agents (name, command, output, max_parallel_tasks, timeout_seconds,"
    " queue_limit, env, mcp, created_at, updated_at)"
    " SELECT 'agent-' || i, '[\"true\"]', 'text', 3, 900, 100, '{}', false, now(), now()"
    " FROM generate_series(0, :agents - 1) AS i"
)
# Row i: agent i % agents, created i-th of count over the span, a status and a trigger by
# residue, a cost and a duration on finished rows.
_EXECUTIONS = """
INSERT INTO executions (id, agent_name, status, triggered_by, message, cost, duration_ms,
                        created_at, completed_at, attempt)
SELECT lpad(i::text, 26, '0'), 'agent-' || (i % :agents),
       s.status, (ARRAY['manual','schedule','mcp','chat','paid'])[1 + i % 5], 'bench',
       CASE WHEN s.status IN ('completed', 'failed') THEN (i % 1000) / 10000.0 END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN 100 + (i * 7919) % 60000 END,
       now() - make_interval(secs => :span_seconds * i / :count),
       now() - make_interval(secs => :span_seconds * i / :count), 1
FROM generate_series(1, :count) AS i
CROSS JOIN LATERAL (SELECT CASE
    WHEN i <= 3 THEN 'running' WHEN i <= 8 THEN 'pending'
    WHEN i % 10 < 7 THEN 'completed' WHEN i % 10 < 9 THEN 'failed' ELSE 'cancelled'
  END AS status) AS s
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args(argv)


def seed(engine, count: int, agents: int, span_days: float) -> None:
    """Rebuild the tables with `count` executions over `agents` agents and `span_days`."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE executions, agents CASCADE"))
        conn.execute(text(_AGENTS), {"agents": agents})
        params = {"agents": agents, "count": count, "span_seconds": span_days * 86400}
        conn.execute(text(_EXECUTIONS), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE executions"))


def timed(engine, runs: int) -> list[float]:
    """Milliseconds per summary, after one warm-up."""
    found = []
    with Session(engine) as session:
        activity.summary(session, AGENT)
        for _ in range(runs):
            started = time.perf_counter()
            activity.summary(session, AGENT)
            found.append((time.perf_counter() - started) * 1000)
    return found


def main(argv: list[str] | None = None) -> int:
    """Seed, time, print; exit 1 when the spread layout misses the target."""
    args = parse_args(argv)
    url = with_database(libpq_url(args.db_url), "agx_activity_bench")
    ensure_database(url)
    engine = create_engine(normalize_database_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"))
    migrate(url)
    missed = False
    for label, agents, span_days, target in (
        ("spread", 10, 30.0, True),
        ("one agent", 1, 6.9, False),
    ):
        seed(engine, args.count, agents, span_days)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT count(*) FROM executions WHERE agent_name = :a"), {"a": AGENT}
            ).scalar()
        times = sorted(timed(engine, args.runs))
        p50, p95 = statistics.median(times), times[int(0.95 * (len(times) - 1))]
        missed |= target and p50 >= TARGET_MS
        print(
            f"{label:>9}: {args.count} executions, {rows} on {AGENT}: summary p50 {p50:.1f} ms,"
            f" p95 {p95:.1f} ms, max {times[-1]:.1f} ms"
            + (f" (target p50 < {TARGET_MS:.0f} ms)" if target else " (worst case, no target)")
        )
    engine.dispose()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
