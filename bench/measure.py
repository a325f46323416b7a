"""What the benches share: percentiles, CPU by process kind, RabbitMQ queue facts, waiting."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psycopg

from shared.settings import normalize_database_url


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(value: float) -> str:
    """Seconds as milliseconds with one decimal, '-' for NaN."""
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def libpq_url(url: str) -> str:
    """psycopg wants postgresql://, SQLAlchemy postgresql+psycopg://."""
    return normalize_database_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def ensure_database(url: str) -> None:
    """CREATE DATABASE the bench database when missing (connecting to `postgres`)."""
    name = url.rpartition("/")[2].split("?")[0]
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


#: agx's tables, emptied before a bench uses them
AGX_TABLES = "payments, transcripts, executions, schedules, api_keys, agents"


def fresh_database(url: str) -> None:
    """The bench database created when missing, migrated to head, and agx's tables emptied."""
    from shared.db import migrate

    url = libpq_url(url)
    ensure_database(url)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {AGX_TABLES} CASCADE")


def _processes() -> Iterable[tuple[str, list[str]]]:
    """(command name, stat fields from field 3 on) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, _, rest = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        yield comm.partition("(")[2], rest.split()


def group_cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (own, reaped children) of the processes in a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for _, fields in _processes():
        if int(fields[2]) == pgid:  # fields[0] is field 3 (state) of proc(5)
            own += (int(fields[11]) + int(fields[12])) / tick
            children += (int(fields[13]) + int(fields[14])) / tick
    return own, children


#: Services' processes by command name (PostgreSQL backends, redis-server, RabbitMQ's VM).
SERVICES = {"postgres": "postgres", "redis-server": "redis", "beam.smp": "rabbitmq"}


def cpu_snapshot(groups: Mapping[str, int], agents_of: str | None = None) -> dict[str, float]:
    """CPU seconds so far by process kind.

    `groups` names process groups (kind -> pgid): each counts its processes' own CPU and
    their reaped children's, except `agents_of`, whose reaped children (the agents a worker
    ran and waited for) count as `agents`. Services count by command name, own CPU plus
    reaped children (PostgreSQL's postmaster reaps ended backends); `bench` is this process
    (the submitters); `machine` is the whole machine (/proc/stat, all but idle and iowait),
    so it includes whatever else ran meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys([*groups, "agents", *SERVICES.values()], 0.0)
    by_pgid = {pgid: kind for kind, pgid in groups.items()}
    for comm, fields in _processes():
        own = (int(fields[11]) + int(fields[12])) / tick
        reaped = (int(fields[13]) + int(fields[14])) / tick
        kind = by_pgid.get(int(fields[2])) or SERVICES.get(comm)
        if kind is None:
            continue
        totals[kind] += own
        totals["agents" if kind == agents_of else kind] += reaped
    mine = os.times()
    totals["bench"] = mine.user + mine.system
    totals["machine"] = machine_busy()
    return totals


def machine_busy() -> float:
    """CPU seconds the whole machine has spent so far (all but idle and iowait)."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")


def settle(db_url: str, quiet_cpus: float = 0.2, window: float = 1.0, timeout: float = 60) -> float:
    """Before a side: VACUUM ANALYZE the bench database (what an earlier side wrote is not
    vacuumed by autovacuum during this one, and every side plans on fresh statistics), then
    wait until the machine has been quiet (under `quiet_cpus` CPUs busy) for `window` seconds,
    at most `timeout`. Without it the side that ran second was measured up to 20% slower
    than when it ran first (the first side's clean-up ran meanwhile). Returns seconds waited."""
    started = time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    while time.monotonic() - started < timeout:
        before = machine_busy()
        time.sleep(window)
        if machine_busy() - before < quiet_cpus * window:
            break
    return time.monotonic() - started


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment holds `marker` (NAME=value) but this one."""
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def delete_queues(amqp_url: str, queues: Iterable[str]) -> None:
    """Delete queues and Dramatiq's delay and dead-letter queues of each."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for queue in queues:
            for name in (queue, queue + ".DQ", queue + ".XQ"):
                channel.queue_delete(name)
    finally:
        conn.close()


def queue_info(amqp_url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue; (0, 0) when it is not declared yet."""
    import pika
    from pika.exceptions import ChannelClosedByBroker

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method = conn.channel().queue_declare(queue, passive=True).method
        return method.message_count, method.consumer_count
    except ChannelClosedByBroker:
        return 0, 0
    finally:
        if conn.is_open:
            conn.close()


class TimedOut(TimeoutError):
    """A wait ran past its deadline."""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    logs: Callable[[], str] = lambda: "",
) -> None:
    """Poll `predicate` until it is true; TimedOut (with `logs()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
        time.sleep(interval)
