"""Where a worker's CPU goes per execution: `Executor.handle` on this thread, real services.

    python bench/executor_split.py [--count 2000]

Submits --count executions of a `/bin/sh` agent with room for all of them (each is published,
to a queue nobody consumes, and deleted at the end), then runs each with the worker's own
`Executor.handle` on this one thread, timing the thread's CPU (time.thread_time) in every
step: the agent process's CPU and Dramatiq's consumer are not counted (bench/throughput.py
measures those). It uses the bench database `agx_bench` (truncated) and Redis db 14 (flushed).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="agx-split-metrics-"))

import redis  # noqa: E402

from bench.measure import delete_queues, fresh_database, libpq_url  # noqa: E402
from shared import metrics  # noqa: E402
from shared.models import Agent  # noqa: E402
from shared.rebuild import ensure_epoch  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.settings import Settings, normalize_database_url  # noqa: E402
from shared.slots import Slots  # noqa: E402
from workers import executor, runner  # noqa: E402
from workers.executor import Executor  # noqa: E402

AGENT = "bench-split"
QUEUE = "agx-bench-split"

#: (owner, attribute, step): what is timed. Steps nest: the agent's run includes its start.
STEPS: list[tuple[Any, str, str]] = [
    (Slots, "acquire", "Redis: slot lease"),
    (Executor, "_claim", "PostgreSQL: claim"),
    (executor, "run_agent", "agent run (start, pipes, lines, events)"),
    (runner, "_spawn", "  of which: start the process"),
    (Executor, "_write_terminal", "PostgreSQL: terminal write + transcript"),
    (Executor, "_release_after_run", "Redis: release + events"),
    (metrics, "record_run", "metrics"),
    (logging.Logger, "info", "log line"),
]


def timed(spent: dict[str, float], step: str, work: Callable[..., Any]) -> Callable[..., Any]:
    """`work`, adding the calling thread's CPU time in it to spent[step]."""

    @functools.wraps(work)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return work(*args, **kwargs)
        finally:
            spent[step] += time.thread_time() - started

    return call


def services_for(args: argparse.Namespace) -> Services:
    """Migrated, emptied bench database and Redis db; one agent with room for every run."""
    db = libpq_url(args.db_url)
    fresh_database(db)
    redis.Redis.from_url(args.redis_url).flushdb()
    settings = Settings(
        database_url=normalize_database_url(db),
        redis_url=args.redis_url,
        broker_url=args.amqp_url,
        home=Path(tempfile.mkdtemp(prefix="agx-split-")),
        queue=QUEUE,
    )
    services = Services(settings, pool_size=4, autocommit=True)
    ensure_epoch(services)
    with services.Session.begin() as session:
        command = ["/bin/sh", "-c", 'read -r m; echo "$m"']
        session.add(
            Agent(
                name=AGENT,
                command=command,
                output="text",
                timeout_seconds=300,
                max_parallel_tasks=args.count * 2,
                queue_limit=args.count * 2,
            )
        )
    return services


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="executions timed (after 100 warm)")
    p.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = p.parse_args(argv)
    from producer.submit import submit_execution

    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    services = services_for(args)
    try:
        worker = Executor(services)
        ids = [
            submit_execution(services, AGENT, f"m{i}").execution.id for i in range(args.count + 100)
        ]
        for execution_id in ids[:100]:
            worker.handle(execution_id, AGENT)
        spent: dict[str, float] = dict.fromkeys((step for _, _, step in STEPS), 0.0)
        for owner, name, step in STEPS:
            setattr(owner, name, timed(spent, step, getattr(owner, name)))
        started = time.thread_time()
        for execution_id in ids[100:]:
            worker.handle(execution_id, AGENT)
        total = time.thread_time() - started
    finally:
        services.close()
        delete_queues(args.amqp_url, [QUEUE])
    print(f"worker thread CPU per execution: {total / args.count * 1e6:.0f} µs")
    for _, _, step in STEPS:
        print(f"  {step:<44}{spent[step] / args.count * 1e6:>6.0f} µs")
    named = sum(v for k, v in spent.items() if not k.startswith("  "))
    rest = (total - named) / args.count * 1e6
    print(f"  {'the rest (job, watch, redaction, parser...)':<44}{rest:>6.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
