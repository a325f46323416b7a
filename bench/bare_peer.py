"""The bare peer of bench/throughput.py: one plain Dramatiq actor on RabbitMQ, no agx code.

It mirrors what agx does per execution with nothing else: the producer INSERTs a
`pending` row and publishes its id (publisher confirms, as agx); the actor
CASes the row to `running` (stamping started_at), runs the same agent program
with the message on stdin via `subprocess.run`, and UPDATEs the row to
`completed` with the output. No slot leases, no heartbeat, no transcript row.

Workers: `python -m dramatiq bench.bare_peer --processes P --threads T`, configured by
BENCH_BROKER_URL, BENCH_DATABASE_URL, BENCH_QUEUE, BENCH_AGENT_ARGV (JSON list)
and BENCH_RECORD (passed on to the agent).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from datetime import UTC, datetime

import dramatiq
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import TimeLimit, default_middleware

ACTOR_NAME = "bare_run"
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_bare_runs (
    id text PRIMARY KEY,
    status text NOT NULL,
    message text NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    exit_code integer,
    output text
)
"""

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/agx_bench"
)
QUEUE = os.environ.get("BENCH_QUEUE", "bench-bare")


def make_broker(url: str = BROKER_URL) -> RabbitmqBroker:
    """The same broker configuration agx uses: publisher confirms, no TimeLimit."""
    middleware = [m() for m in default_middleware if m is not TimeLimit]
    return RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)


def message_for(run_id: str, queue: str = QUEUE) -> dramatiq.Message:
    """The message carrying one run id to the actor."""
    return dramatiq.Message(
        queue_name=queue, actor_name=ACTOR_NAME, args=(run_id,), kwargs={}, options={}
    )


def submit(
    conn: psycopg.Connection, broker: dramatiq.Broker, message: str, queue: str = QUEUE
) -> str:
    """Producer: INSERT the pending row (autocommit), then publish its id."""
    run_id = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO bench_bare_runs (id, status, message, created_at) "
        "VALUES (%s, 'pending', %s, %s)",
        (run_id, message, datetime.now(UTC)),
    )
    broker.enqueue(message_for(run_id, queue))
    return run_id


# --- worker side: only when imported by `dramatiq bench.bare_peer` ---------------------------

broker = make_broker()
dramatiq.set_broker(broker)
_local = threading.local()


def _conn() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DATABASE_URL, autocommit=True)
    return conn


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE, max_retries=0)
def bare_run(run_id: str) -> None:
    """Claim the row, run the agent, record the outcome."""
    conn = _conn()
    row = conn.execute(
        "UPDATE bench_bare_runs SET status = 'running', attempt = attempt + 1, started_at = %s "
        "WHERE id = %s AND status = 'pending' RETURNING message",
        (datetime.now(UTC), run_id),
    ).fetchone()
    if row is None:
        return
    argv = json.loads(os.environ["BENCH_AGENT_ARGV"])
    proc = subprocess.run(argv, input=row[0].encode(), capture_output=True, timeout=300)
    status = "completed" if proc.returncode == 0 else "failed"
    conn.execute(
        "UPDATE bench_bare_runs SET status = %s, completed_at = %s, exit_code = %s, output = %s "
        "WHERE id = %s AND status = 'running'",
        (status, datetime.now(UTC), proc.returncode, proc.stdout.decode(errors="replace"), run_id),
    )
