"""Fire lag of `agx scheduler` for many schedules due at once, beside bare APScheduler.

    python bench/cron.py [--schedules 1000 --schedulers 2 --threads 10 --agents 20]

agx: --schedules schedules (spread over --agents agents) all due at the same second,
fired by --schedulers real `python -m agx scheduler` processes on PostgreSQL. The lag
of a schedule is its execution row's created_at minus its due time (the row is created
by submit_execution, after the claim; no workers run, so rows created = submitted).
It also counts executions and fire records per (schedule, due time): duplicates must be 0.

bare: one in-process APScheduler 3 BackgroundScheduler with the same number of threads
and the same number of CronTrigger jobs due at one second; each job only records the
time it started. Its lag is the floor any APScheduler-based service starts from.

Services: database `agx_cron_bench` (created, schema rebuilt each run), Redis db 13
(flushed), RabbitMQ queue `agx-cron-bench-<random>` (deleted at the end). The due time
uses the test-only seconds field (AGX_SCHEDULER_TEST_SECONDS=1).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

from agx import procs  # noqa: E402
from bench.measure import (  # noqa: E402
    delete_queues,
    ensure_database,
    group_cpu,
    libpq_url,
    pct,
)
from shared.db import migrate, normalize_database_url  # noqa: E402
from shared.models import Agent, Schedule, new_id  # noqa: E402
from shared.settings import TEST_SECONDS_ENV  # noqa: E402

TARGET_SECONDS = 2.0  #: every schedule submitted within this of its due time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--schedules", type=int, default=1000)
    p.add_argument("--agents", type=int, default=20, help="agents the schedules spread over")
    p.add_argument("--schedulers", type=int, default=2, help="agx scheduler processes")
    p.add_argument("--threads", type=int, default=10, help="threads per scheduler (and bare)")
    p.add_argument("--lead", type=float, default=12.0, help="seconds from setup to the due time")
    p.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_cron_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--keep-logs", action="store_true", help="keep the schedulers' logs")
    args = p.parse_args(argv)
    if args.db_url.rpartition("/")[2] == "test" or args.redis_url.endswith(("/15", "/14")):
        p.error("database `test` and Redis db 14/15 belong to the test suite and throughput bench")
    return args


def prepare(args: argparse.Namespace, due: datetime) -> None:
    """Fresh schema, agents with room for every fire, and the schedules all due at `due`."""
    ensure_database(libpq_url(args.db_url))
    engine = create_engine(normalize_database_url(args.db_url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"))
    migrate(args.db_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    cron = f"{due.second} {due.minute} {due.hour} {due.day} {due.month} *"
    now = datetime.now(UTC)
    agents = [f"bench-{i}" for i in range(args.agents)]
    with engine.begin() as conn:
        conn.execute(
            insert(Agent),
            [
                {
                    "name": name,
                    "command": [sys.executable, "-m", "agx.demo_agent"],
                    "output": "text",
                    "max_parallel_tasks": 3,
                    "timeout_seconds": 60,
                    "queue_limit": 1_000_000,
                    "env": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for name in agents
            ],
        )
        conn.execute(
            insert(Schedule),
            [
                {
                    "id": new_id(),
                    "agent_name": agents[i % len(agents)],
                    "name": f"bench {i}",
                    "cron": cron,
                    "timezone": "UTC",
                    "message": f"scheduled {i}",
                    "enabled": True,
                    "overlap": "skip",
                    "misfire_grace_seconds": 300,
                    "next_run_at": due,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(args.schedules)
            ],
        )
    engine.dispose()


def start_schedulers(args: argparse.Namespace, workdir: Path, queue: str) -> list:
    env = {
        **os.environ,
        "AGX_DATABASE_URL": args.db_url,
        "AGX_REDIS_URL": args.redis_url,
        "AGX_BROKER_URL": args.amqp_url,
        "AGX_QUEUE": queue,
        TEST_SECONDS_ENV: "1",
        "AGX_HOME": str(workdir),
    }
    started = []
    for i in range(args.schedulers):
        with open(workdir / f"scheduler-{i}.log", "wb") as log:
            started.append(
                procs.spawn(
                    [sys.executable, "-m", "agx", "scheduler", "--threads", str(args.threads)],
                    env,
                    log.fileno(),
                )
            )
    return started


def wait_in_sync(args: argparse.Namespace, workdir: Path, due: datetime) -> None:
    marker = f"in sync: {args.schedules} enabled schedules"
    while not all(marker in p.read_text(errors="replace") for p in workdir.glob("scheduler-*.log")):
        if datetime.now(UTC) > due - timedelta(seconds=1):
            raise SystemExit("schedulers were not loaded before the due time: raise --lead")
        time.sleep(0.1)


def count(conn: psycopg.Connection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def collect(args: argparse.Namespace, due: datetime) -> dict[str, object]:
    """Wait for every row (or 30 s past due), then read lags, duplicates and the split."""
    deadline = due + timedelta(seconds=30)
    with psycopg.connect(libpq_url(args.db_url), autocommit=True) as conn:
        while (
            count(conn, "SELECT count(*) FROM executions") < args.schedules
            and datetime.now(UTC) < deadline
        ):
            time.sleep(0.1)
        time.sleep(1.0)  # let a late duplicate, if any, show up
        lags = [
            float(r[0])
            for r in conn.execute(
                "SELECT extract(epoch FROM created_at - scheduled_for) FROM executions"
            )
        ]
        dup_exec = count(
            conn,
            "SELECT count(*) FROM (SELECT 1 FROM executions GROUP BY "
            "schedule_id, scheduled_for HAVING count(*) > 1) d",
        )
        dup_fire = count(
            conn,
            "SELECT count(*) FROM (SELECT 1 FROM schedule_fires GROUP BY "
            "schedule_id, scheduled_for HAVING count(*) > 1) d",
        )
        outcomes: dict[str, int] = {
            r[0]: r[1]
            for r in conn.execute("SELECT outcome, count(*) FROM schedule_fires GROUP BY 1")
        }
        split = sorted(
            r[0] for r in conn.execute("SELECT count(*) FROM schedule_fires GROUP BY scheduler_id")
        )
    return {
        "lags": lags,
        "dup_exec": dup_exec,
        "dup_fire": dup_fire,
        "outcomes": outcomes,
        "split": split,
    }


def run_agx(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    due = (datetime.now(UTC) + timedelta(seconds=args.lead)).replace(microsecond=0)
    prepare(args, due)
    queue = f"agx-cron-bench-{uuid.uuid4().hex[:8]}"
    started = start_schedulers(args, workdir, queue)
    try:
        wait_in_sync(args, workdir, due)
        before = [sum(group_cpu(p.pid)) for p in started]
        result = collect(args, due)
        result["cpu"] = [sum(group_cpu(p.pid)) - b for p, b in zip(started, before, strict=True)]
        return result
    finally:
        for proc in started:
            procs.stop(proc, 20)
        delete_queues(args.amqp_url, [queue])
        redis.Redis.from_url(args.redis_url).flushdb()


def run_bare(args: argparse.Namespace) -> list[float]:
    """APScheduler alone: the same number of cron jobs at one second, each records its start."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    due = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    started: list[float] = []
    lock, done = threading.Lock(), threading.Event()

    def job() -> None:
        with lock:
            started.append(time.time())
            if len(started) == args.schedules:
                done.set()

    bare = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(args.threads)},
        job_defaults={"misfire_grace_time": None},
    )
    trigger = CronTrigger(second=due.second, minute=due.minute, hour=due.hour, timezone=UTC)
    for i in range(args.schedules):
        bare.add_job(job, trigger, id=f"job-{i}")
    bare.start()
    done.wait(30)
    bare.shutdown(wait=True)
    return [t - due.timestamp() for t in started]


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def report(args: argparse.Namespace, agx: dict, bare: list[float]) -> None:
    lags: list[float] = agx["lags"]  # type: ignore[assignment]
    print(
        f"\n{args.schedules} schedules due at one second, {args.schedulers} schedulers x "
        f"{args.threads} threads, {args.agents} agents\n"
    )
    print(f"{'':<28}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'fired':>8}")
    for name, values in (("agx (due -> row created)", lags), ("bare APScheduler", bare)):
        print(
            f"{name:<28}{ms(pct(values, 50)):>10}{ms(pct(values, 99)):>10}"
            f"{ms(max(values, default=math.nan)):>10}{len(values):>8}"
        )
    for p in (50, 99):
        ratio = pct(lags, p) / pct(bare, p) if pct(bare, p) else math.nan
        print(f"ratio agx / bare at p{p}: {ratio:.1f}")
    within = sum(v <= TARGET_SECONDS for v in lags)
    print(
        f"\nsubmitted within {TARGET_SECONDS:.0f} s of due: {within}/{args.schedules}"
        f" ({'met' if within == args.schedules else 'MISSED'})"
    )
    print(f"duplicate executions: {agx['dup_exec']}, duplicate fire records: {agx['dup_fire']}")
    print(f"fire records by outcome: {agx['outcomes']}; records per scheduler: {agx['split']}")
    cpu = ", ".join(f"{c:.2f}" for c in agx["cpu"])  # type: ignore[attr-defined]
    print(f"CPU seconds per scheduler process from 1 s before due to the end: {cpu}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="agx-cron-bench-"))
    print(f"[agx] {args.schedules} schedules, logs in {workdir} ...", flush=True)
    try:
        agx = run_agx(args, workdir)
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    print("[bare] APScheduler alone ...", flush=True)
    bare = run_bare(args)
    report(args, agx, bare)
    return 0 if agx["dup_exec"] == 0 and agx["dup_fire"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
