"""Throughput and dispatch latency of agx against a bare Dramatiq + RabbitMQ peer.

    python bench/throughput.py --count 2000 [--processes 2 --threads 8 --idle-samples 50]

For each side, in one run and one after the other (never both at once):

* start its worker pool (`python -m agx workers` / `python -m dramatiq bench.bare_peer`,
  same --processes/--threads) in its own process group, wait for every process to
  consume, and warm it up;
* idle: submit one execution at a time, wait for it to finish, and take the idle
  dispatch latency;
* load: submit --count executions from --submit-threads threads and wait until every
  row is terminal.

Both run the same agent program (bench/trivial_agent.py under `python -S`), which
stamps time.time() as its very first statement. "dispatch (agent start)" is that
stamp minus the submit time (taken just before the submit call), so it includes
interpreter start-up; "dispatch (claim)" is the row's started_at (set by the worker
when it claims the row) minus the submit time, which does not. Throughput is
count / (last completed_at - first submit).

Services (defaults; override with the flags): PostgreSQL database `agx_bench`
(created and migrated here), Redis db 14 (flushed), RabbitMQ queues
`agx-bench-<random>` and `bench-bare-<random>` (deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from agx import procs  # noqa: E402
from shared.db import migrate  # noqa: E402
from shared.models import Agent  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.settings import Settings, normalize_database_url  # noqa: E402

AGENT_NAME = "bench-trivial"
AGENT_SCRIPT = Path(__file__).resolve().parent / "trivial_agent.py"
AGENT_ARGV = [sys.executable, "-S", str(AGENT_SCRIPT)]
TERMINAL = ("completed", "failed", "cancelled")


# --- small helpers ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def libpq_url(url: str) -> str:
    """psycopg wants postgresql://, SQLAlchemy postgresql+psycopg://."""
    return normalize_database_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def ensure_database(url: str) -> None:
    """CREATE DATABASE the bench database when missing (connecting to `postgres`)."""
    name = url.rpartition("/")[2].split("?")[0]
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def group_cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (own, reaped children) of the processes in a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is field 3 (state) of proc(5)
            own += (int(fields[11]) + int(fields[12])) / tick
            children += (int(fields[13]) + int(fields[14])) / tick
    return own, children


SERVICES = {"postgres": "postgres", "redis-server": "redis", "beam.smp": "rabbitmq"}


def machine_cpu() -> dict[str, float]:
    """CPU seconds so far: the whole machine (/proc/stat), this process (the submitters), and
    the live processes of each service (PostgreSQL backends, Redis, RabbitMQ) by name."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    totals = {"machine": (sum(cpu) - cpu[3] - cpu[4]) / tick}  # all but idle and iowait
    own = os.times()
    totals["bench"] = own.user + own.system
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, _, rest = (entry / "stat").read_text().partition(") ")
        except OSError:
            continue
        name = SERVICES.get(comm.partition(" (")[2])
        if name:
            fields = rest.split()
            totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


def kill_agents(record: Path) -> None:
    """SIGKILL agent processes of this bench run (their env names our record file).

    agx starts agents in their own session (PR_SET_PDEATHSIG kills them with their
    worker thread), so the pool's process group does not cover them: sweep by pid.
    """
    marker = f"BENCH_RECORD={record}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def delete_queues(amqp_url: str, queues: Iterable[str]) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for queue in queues:
            for name in (queue, queue + ".DQ", queue + ".XQ"):
                channel.queue_delete(name)
    finally:
        conn.close()


def _queue_info(amqp_url: str, queue: str) -> tuple[int, int]:
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


def consumer_count(amqp_url: str, queue: str) -> int:
    return _queue_info(amqp_url, queue)[1]


def queue_depth(amqp_url: str, queue: str) -> int:
    return _queue_info(amqp_url, queue)[0]


class TimedOut(RuntimeError):
    """A wait ran past its deadline."""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    logs: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
        time.sleep(interval)


# --- one side of the comparison ---------------------------------------------------------------


@dataclass
class Run:
    """What the bench knows about one execution, then what the database says."""

    key: str  # execution id / bare run id
    message: str
    submitted: float  # time.time() just before the submit call
    returned: float = math.nan  # time.time() when the submit call returned
    status: str = ""
    attempt: int = 0
    created: float = math.nan
    claimed: float = math.nan  # started_at
    agent_start: float = math.nan
    agent_end: float = math.nan
    completed: float = math.nan
    error: str | None = None


@dataclass
class Result:
    name: str
    load: list[Run] = field(default_factory=list)
    idle: list[Run] = field(default_factory=list)
    wall: float = math.nan
    runs_per_message: Counter[str] = field(default_factory=Counter)
    leftover: int = 0  # messages still in the queue once every row is terminal
    cpu: tuple[float, float] = (math.nan, math.nan)  # worker pool CPU s: own, agents
    machine: dict[str, float] = field(default_factory=dict)  # CPU s under load, see machine_cpu

    @property
    def finished(self) -> int:
        return sum(r.status in TERMINAL for r in self.load)

    @property
    def rate(self) -> float:
        return self.finished / self.wall if self.wall else math.nan


def _parse_output(run: Run, output: str | None) -> None:
    try:
        start, end = (output or "").split("\n", 1)[0].split()
        run.agent_start, run.agent_end = float(start), float(end)
    except ValueError:
        pass


class Side:
    """Start workers, submit, read the rows back; subclassed for agx and the bare peer."""

    name = ""
    table = ""

    def __init__(self, args: argparse.Namespace, tag: str, workdir: Path):
        self.args, self.tag, self.workdir = args, tag, workdir
        self.record = workdir / f"{self.name}.record"
        self.proc = None
        self.log = workdir / f"{self.name}-workers.log"
        self._db = threading.local()
        self.cpu = (math.nan, math.nan)
        self.machine: dict[str, float] = {}

    # subclass API
    def prepare(self) -> None: ...
    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        raise NotImplementedError

    def queue(self) -> str:
        raise NotImplementedError

    def submit(self, message: str) -> str:
        raise NotImplementedError

    def fetch(self, keys: list[str]) -> dict[str, tuple]:
        raise NotImplementedError

    def close(self) -> None: ...

    def conn(self) -> psycopg.Connection:
        conn = getattr(self._db, "conn", None)
        if conn is None or conn.closed:
            conn = self._db.conn = psycopg.connect(self.args.db_url, autocommit=True)
        return conn

    def logs(self) -> str:
        try:
            return "--- worker log tail ---\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start_workers(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = procs.spawn(self.worker_argv(), env=self.worker_env(), log=log.fileno())
        wait_until(
            lambda: consumer_count(self.args.amqp_url, self.queue()) >= self.args.processes,
            60,
            f"{self.name} workers to consume",
            interval=0.2,
            logs=self.logs,
        )

    def stop_workers(self) -> None:
        """Stop the pool's process group, then any agent it started that is still alive.

        Ctrl-C and SIGTERM are held off meanwhile, so a second one cannot cut the cleanup.
        """
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            if self.proc is not None:
                procs.stop(self.proc, grace_seconds=10)
                self.proc = None
            kill_agents(self.record)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def _one(self, message: str) -> Run:
        submitted = time.time()
        key = self.submit(message)
        run = Run(key, message, submitted)
        run.returned = time.time()
        return run

    def wait_terminal(
        self, keys: list[str], timeout: float, interval: float, stall: float | None = None
    ) -> set[str]:
        """Wait until every row is terminal; return the ones that are not (timeout or stall)."""
        pending = set(keys)
        progress = [time.monotonic(), len(pending)]
        checked = [time.monotonic()]

        def done() -> bool:
            rows = (
                self.conn()
                .execute(
                    f"SELECT id FROM {self.table} WHERE id = ANY(%s) AND status = ANY(%s)",
                    (list(pending), list(TERMINAL)),
                )
                .fetchall()
            )
            pending.difference_update(r[0] for r in rows)
            now = time.monotonic()
            if len(pending) < progress[1]:
                progress[:] = [now, len(pending)]
            elif stall and now - progress[0] > stall:
                raise TimedOut(f"no {self.name} execution finished for {stall:.0f} s")
            if stall and pending and now - checked[0] > 5:
                checked[0] = now
                depth = queue_depth(self.args.amqp_url, self.queue())
                if depth > self.args.max_queue:
                    raise TimedOut(
                        f"{depth} messages in {self.queue()} (> --max-queue): a message storm"
                    )
            return not pending

        try:
            wait_until(
                done,
                timeout,
                f"{len(pending)} {self.name} executions to finish",
                interval=interval,
                logs=self.logs,
            )
        except TimedOut as exc:
            if stall is None:
                raise
            print(
                f"[{self.name}] GAVE UP: {str(exc).splitlines()[0]}; "
                f"{len(pending)} of {len(keys)} not terminal",
                flush=True,
            )
        return pending

    def collect(self, runs: list[Run]) -> None:
        rows = self.fetch([r.key for r in runs])
        for run in runs:
            status, attempt, created, claimed, completed, output, error = rows[run.key]
            run.status, run.attempt, run.error = status, attempt, error
            run.created = created.timestamp() if created else math.nan
            run.claimed = claimed.timestamp() if claimed else math.nan
            run.completed = completed.timestamp() if completed else math.nan
            _parse_output(run, output)

    def warm_up(self) -> None:
        n = 2 * self.args.processes * self.args.threads
        runs = [self._one(f"warm-{i}") for i in range(n)]
        self.wait_terminal([r.key for r in runs], 120, 0.05)

    def idle(self, samples: int) -> list[Run]:
        runs = []
        for i in range(samples):
            run = self._one(f"idle-{i}")
            self.wait_terminal([run.key], 60, 0.005)
            runs.append(run)
            time.sleep(0.05)  # let the worker finish its bookkeeping: truly idle next time
        self.collect(runs)
        return runs

    def load(self, count: int) -> tuple[list[Run], float]:
        messages = [f"load-{i}" for i in range(count)]
        runs: list[Run | None] = [None] * count
        errors: list[BaseException] = []
        threads = self.args.submit_threads

        def submitter(k: int) -> None:
            try:
                for i in range(k, count, threads):
                    runs[i] = self._one(messages[i])
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(threads)]
        cpu0 = group_cpu(self.proc.pid)
        machine0 = machine_cpu()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if errors:
            raise errors[0]
        done = [r for r in runs if r is not None]
        unfinished = self.wait_terminal(
            [r.key for r in done], self.args.timeout, 0.2, stall=self.args.stall
        )
        end = time.time()
        cpu1 = group_cpu(self.proc.pid)
        machine1 = machine_cpu()
        self.cpu = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
        self.machine = {k: machine1.get(k, 0.0) - v for k, v in machine0.items()}
        self.collect(done)
        first = min(r.submitted for r in done)
        last = end if unfinished else max(r.completed for r in done)
        return done, last - first

    def run(self) -> Result:
        result = Result(self.name)
        self.prepare()
        try:
            self.start_workers()
            self.warm_up()
            self.record.unlink(missing_ok=True)
            if self.args.idle_samples:
                result.idle = self.idle(self.args.idle_samples)
            result.load, result.wall = self.load(self.args.count)
            result.cpu = self.cpu
            result.machine = self.machine
            if self.record.exists():
                result.runs_per_message = Counter(
                    line.split()[0] for line in self.record.read_text().splitlines() if line
                )
            time.sleep(1)  # let stray (duplicate) messages land before counting them
            result.leftover = queue_depth(self.args.amqp_url, self.queue())
        finally:
            self.stop_workers()
            self.close()
        return result


class AgxSide(Side):
    name = "agx"
    table = "executions"

    def prepare(self) -> None:
        a = self.args
        migrate(a.db_url)
        self.settings = Settings(
            database_url=normalize_database_url(a.db_url),
            redis_url=a.redis_url,
            broker_url=a.amqp_url,
            home=self.workdir / "agx-home",
            queue=self.queue(),
        )
        with self.conn().transaction():
            self.conn().execute(
                "TRUNCATE payments, transcripts, executions, schedules, api_keys, agents CASCADE"
            )
        redis.Redis.from_url(a.redis_url).flushdb()  # db 14 is the bench's own
        self.services = Services(self.settings, pool_size=a.submit_threads + 2)
        with self.services.Session.begin() as session:
            session.add(
                Agent(
                    name=AGENT_NAME,
                    command=AGENT_ARGV,
                    output="text",
                    max_parallel_tasks=a.processes * a.threads,
                    timeout_seconds=300,
                    queue_limit=a.count + 1000,
                    env={"BENCH_RECORD": str(self.record)},
                )
            )

    def queue(self) -> str:
        return f"agx-bench-{self.tag}"

    def worker_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agx",
            "workers",
            "--processes",
            str(self.args.processes),
            "--threads",
            str(self.args.threads),
        ]

    def worker_env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "AGX_DATABASE_URL": s.database_url or "",
            "AGX_REDIS_URL": s.redis_url or "",
            "AGX_BROKER_URL": s.broker_url or "",
            "AGX_QUEUE": s.queue,
            "AGX_HOME": str(s.home),
            "PYTHONPATH": str(ROOT),
        }

    def submit(self, message: str) -> str:
        from producer.submit import Publication, submit_execution

        submitted = submit_execution(self.services, AGENT_NAME, message)
        if submitted.publication is Publication.failed:
            raise RuntimeError(f"publish failed for {submitted.execution.id}")
        return submitted.execution.id

    def fetch(self, keys: list[str]) -> dict[str, tuple]:
        rows = (
            self.conn()
            .execute(
                "SELECT id, status, attempt, created_at, started_at, completed_at, response, error "
                "FROM executions WHERE id = ANY(%s)",
                (keys,),
            )
            .fetchall()
        )
        return {r[0]: r[1:] for r in rows}

    def close(self) -> None:
        if hasattr(self, "services"):
            self.services.close()


class BareSide(Side):
    name = "bare"
    table = "bench_bare_runs"

    def prepare(self) -> None:
        os.environ.update(self._bench_env())  # read by bench.bare_peer at import
        from bench import bare_peer

        self.peer = bare_peer
        self.conn().execute("DROP TABLE IF EXISTS bench_bare_runs")
        self.conn().execute(bare_peer.TABLE_DDL)
        self.broker = bare_peer.make_broker(self.args.amqp_url)

    def _bench_env(self) -> dict[str, str]:
        return {
            "BENCH_BROKER_URL": self.args.amqp_url,
            "BENCH_DATABASE_URL": self.args.db_url,
            "BENCH_QUEUE": self.queue(),
            "BENCH_AGENT_ARGV": json.dumps(AGENT_ARGV),
            "BENCH_RECORD": str(self.record),
        }

    def queue(self) -> str:
        return f"bench-bare-{self.tag}"

    def worker_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "bench.bare_peer",
            "--processes",
            str(self.args.processes),
            "--threads",
            str(self.args.threads),
        ]

    def worker_env(self) -> dict[str, str]:
        # The same prefetch `agx workers` sets.
        return {
            **os.environ,
            **self._bench_env(),
            "PYTHONPATH": str(ROOT),
            "dramatiq_queue_prefetch": str(self.args.threads),
        }

    def submit(self, message: str) -> str:
        return self.peer.submit(self.conn(), self.broker, message, self.queue())

    def fetch(self, keys: list[str]) -> dict[str, tuple]:
        rows = (
            self.conn()
            .execute(
                "SELECT id, status, attempt, created_at, started_at, completed_at, output, "
                "CASE WHEN status = 'completed' THEN NULL ELSE 'exit ' || exit_code END "
                "FROM bench_bare_runs WHERE id = ANY(%s)",
                (keys,),
            )
            .fetchall()
        )
        return {r[0]: r[1:] for r in rows}

    def close(self) -> None:
        if hasattr(self, "broker"):
            self.broker.close()


# --- report ------------------------------------------------------------------------------------


def tree_version() -> str:
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *a], capture_output=True, text=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{git('rev-parse', '--short', 'HEAD')}{' (+ uncommitted changes)' if dirty else ''}"


def dispatch(runs: list[Run]) -> tuple[list[float], list[float]]:
    start = [r.agent_start - r.submitted for r in runs if not math.isnan(r.agent_start)]
    claim = [r.claimed - r.submitted for r in runs if not math.isnan(r.claimed)]
    return start, claim


def report(results: list[Result], args: argparse.Namespace) -> None:
    """Print the comparison of the sides, the targets, the step breakdown and the checks."""
    _print_header(args)
    _print_table(results)
    _print_cpu(results)
    _print_targets(results)
    for r in results:
        breakdown(r)
    for r in results:
        if r.name == "agx":
            verify(r)


def _print_header(args: argparse.Namespace) -> None:
    """The tree version, the settings of the run and what the dispatch columns mean."""
    print(f"\ntree: {tree_version()}")
    print(
        f"{args.count} executions, workers --processes {args.processes} "
        f"--threads {args.threads}, {args.submit_threads} submit threads, "
        f"{os.cpu_count()} CPUs; agent: python -S bench/trivial_agent.py"
    )
    print(
        "dispatch (agent start) = agent's first time.time() - submit; "
        "dispatch (claim) = row started_at - submit\n"
    )


def _print_table(results: list[Result]) -> None:
    """One row per side: count, wall time, throughput and dispatch latencies."""
    head = (
        f"{'side':<6}{'count':>7}{'wall s':>9}{'exec/s':>9}"
        f"{'start p50':>11}{'start p99':>11}{'claim p50':>11}{'claim p99':>11}"
        f"{'idle start p50':>16}{'idle claim p50':>16}"
    )
    print(head + "\n" + "-" * len(head))
    for r in results:
        start, claim = dispatch(r.load)
        istart, iclaim = dispatch(r.idle)
        count = f"{r.finished}" if r.finished == len(r.load) else f"{r.finished}/{len(r.load)}"
        print(
            f"{r.name:<6}{count:>7}{r.wall:>9.2f}{r.rate:>9.1f}"
            f"{ms(pct(start, 50)):>11}{ms(pct(start, 99)):>11}"
            f"{ms(pct(claim, 50)):>11}{ms(pct(claim, 99)):>11}"
            f"{ms(pct(istart, 50)):>16}{ms(pct(iclaim, 50)):>16}"
        )
    print("(latencies in ms; count = executions finished under load)")


def _print_cpu(results: list[Result]) -> None:
    """CPU per execution under load (pool, agents, machine) and leftover queued messages."""
    for r in results:
        n = max(r.finished, 1)
        print(
            f"{r.name}: worker pool CPU under load {r.cpu[0]:.1f} s "
            f"({r.cpu[0] / n * 1000:.1f} ms per execution), agent processes "
            f"{r.cpu[1] / n * 1000:.1f} ms per execution"
        )
        parts = ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in r.machine.items() if k != "machine")
        total = r.machine.get("machine", math.nan) / n * 1000
        print(
            f"{r.name}: machine CPU under load {total:.1f} ms per execution ({parts}; "
            "services: live processes only)"
        )
    for r in results:
        if r.leftover:
            print(
                f"{r.name}: {r.leftover} messages still queued after every row was terminal "
                "(duplicate deliveries)"
            )


def _print_targets(results: list[Result]) -> None:
    """The throughput ratio and the idle dispatch latency against their targets."""
    by = {r.name: r for r in results}
    if "agx" in by and "bare" in by:
        ratio = by["agx"].rate / by["bare"].rate
        print(
            f"\nthroughput ratio agx / bare = {ratio:.2f}  (target >= 0.80: "
            f"{'PASS' if ratio >= 0.8 else 'FAIL'})"
        )
    if "agx" in by and by["agx"].idle:
        istart, iclaim = dispatch(by["agx"].idle)
        print(
            f"agx idle dispatch p50: claim {ms(pct(iclaim, 50))} ms (target <= 10: "
            f"{'PASS' if pct(iclaim, 50) <= 0.010 else 'FAIL'}), "
            f"agent start {ms(pct(istart, 50))} ms (includes interpreter start-up)"
        )


def breakdown(r: Result) -> None:
    """Where the time goes per execution, p50 in ms, idle and under load."""
    steps = [
        ("submit call", lambda x: x.returned - x.submitted),
        ("submit return -> claim", lambda x: x.claimed - x.returned),
        ("claim -> agent start", lambda x: x.agent_start - x.claimed),
        ("agent start -> agent end", lambda x: x.agent_end - x.agent_start),
        ("agent end -> completed", lambda x: x.completed - x.agent_end),
        ("submit -> completed", lambda x: x.completed - x.submitted),
    ]
    print(f"\n{r.name}: per-execution steps (ms)   idle p50   idle p90   load p50   load p99")
    for label, f in steps:
        idle = [v for v in map(f, r.idle) if not math.isnan(v)]
        load = [v for v in map(f, r.load) if not math.isnan(v)]
        print(
            f"  {label:<30}{ms(pct(idle, 50)):>9}{ms(pct(idle, 90)):>11}"
            f"{ms(pct(load, 50)):>11}{ms(pct(load, 99)):>11}"
        )


def verify(r: Result) -> None:
    runs = r.idle + r.load
    bad = [x for x in runs if x.status != "completed" or x.attempt != 1]
    started = [r.runs_per_message.get(x.message, 0) for x in runs]
    twice = sum(1 for n in started if n > 1)
    never = sum(1 for n in started if n == 0)
    ok = not bad and not twice and not never
    print(
        f"\nagx correctness: {len(runs)} executions ({len(r.idle)} idle + {len(r.load)} load): "
        f"{sum(x.status == 'completed' for x in runs)} completed, "
        f"{sum(x.attempt == 1 for x in runs)} with attempt == 1, agent process started "
        f"exactly once for {sum(n == 1 for n in started)} "
        f"(twice+: {twice}, never: {never}) -> {'OK' if ok else 'FAILED'}"
    )
    for x in bad[:5]:
        print(f"  {x.key}: status={x.status} attempt={x.attempt} error={x.error!r}")
    if not ok:
        raise SystemExit(1)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="executions under load per side")
    p.add_argument("--processes", type=int, default=2, help="worker processes (both sides)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker process")
    p.add_argument(
        "--idle-samples",
        type=int,
        default=50,
        help="one-at-a-time executions for idle dispatch latency (0: skip)",
    )
    p.add_argument("--submit-threads", type=int, default=4, help="concurrent submitters")
    p.add_argument("--only", choices=("agx", "bare"), help="run one side only")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the load")
    p.add_argument(
        "--stall",
        type=float,
        default=60,
        help="give up (and report what finished) after this long without progress",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=1_000_000,
        help="give up when the queue holds more messages than this (a storm)",
    )
    p.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with worker logs")
    args = p.parse_args(argv)
    args.db_url = libpq_url(args.db_url)
    if args.redis_url.rstrip("/").endswith("/15"):
        p.error("Redis db 15 belongs to the test suite")
    if args.db_url.rpartition("/")[2] == "test":
        p.error("database `test` belongs to the test suite")
    return args


def _interrupt(signum: int, frame: object) -> None:
    """First Ctrl-C/SIGTERM/SIGHUP: unwind (cleanup runs in `finally`); later ones are ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="agx-bench-"))
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` below stops its workers.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # even if started ignored
        signal.signal(sig, _interrupt)
    ensure_database(args.db_url)
    sides: list[Side] = []
    if args.only in (None, "agx"):
        sides.append(AgxSide(args, tag, workdir))
    if args.only in (None, "bare"):
        sides.append(BareSide(args, tag, workdir))
    results = []
    try:
        for side in sides:
            print(f"[{side.name}] running (logs in {workdir}) ...", flush=True)
            t0 = time.monotonic()
            results.append(side.run())
            print(f"[{side.name}] done in {time.monotonic() - t0:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping workers and deleting the bench queues", file=sys.stderr)
        return 130
    finally:
        cleanup(args, sides, workdir)
    report(results, args)
    return 0


def cleanup(args: argparse.Namespace, sides: list[Side], workdir: Path) -> None:
    """Stop every pool, delete the queues and the temp dir; signals wait until it is done."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    for side in sides:
        side.stop_workers()
    try:
        delete_queues(args.amqp_url, [s.queue() for s in sides])
    except Exception as exc:  # noqa: BLE001 - best effort
        print(f"could not delete bench queues: {exc}", file=sys.stderr)
    if not args.keep_logs:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    for sig in held:  # whatever arrived meanwhile is moot now
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


if __name__ == "__main__":
    sys.exit(main())
