"""Throughput of agx's submit paths against a bare Dramatiq + RabbitMQ + PostgreSQL peer.

    python bench/throughput.py [--count 2000 --processes 2 --threads 8 --submit-threads 8]
    python bench/throughput.py --sides bare,agx --agent python     # the older Python agent

Sides, in one run and one after the other (never two at once), each with a fresh worker pool
of the same size (--processes x --threads, the same prefetch) and the same agent program:

* bare: the peer (bench/bare_peer.py): its producer INSERTs a row and publishes its id; a
  plain Dramatiq actor claims the row, runs the agent, stores the output;
* agx: `producer.submit_execution` from Python, `python -m agx workers`;
* rest: `POST /api/agents/{name}/task` to `agx api` started with its default settings;
* bulk: `POST /api/agents/{name}/tasks` with --batch tasks per call.

Each side: start the pool (and the API), wait for every worker process to consume, warm up,
take --idle-samples executions one at a time (idle dispatch latency), then submit --count
executions from --submit-threads threads at once and wait until every row is terminal.

The agent (--agent sh, the default) is `/bin/sh` reading the message on stdin, appending it to
$BENCH_RECORD (the bench counts each message's runs from it) and printing it: it costs almost
nothing, so what is measured is each system's own cost. `--agent python` runs
bench/trivial_agent.py under `python -S` instead (about 10 ms of CPU per run), which also
stamps when the agent started.

Services (defaults; override with the flags): PostgreSQL database `agx_bench` (created and
migrated here), Redis db 14 (flushed), RabbitMQ queues `agx-bench-<random>-<side>` and
`bench-bare-<random>` (deleted at the end).
"""

from __future__ import annotations

import argparse
import http.client
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from agx import procs  # noqa: E402
from agx.embedded import free_port  # noqa: E402
from bench.measure import (  # noqa: E402
    TimedOut,
    cpu_snapshot,
    delete_queues,
    ensure_database,
    fresh_database,
    kill_marked,
    libpq_url,
    ms,
    pct,
    queue_info,
    settle,
    wait_until,
)
from shared.models import Agent  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.settings import Settings, normalize_database_url  # noqa: E402

AGENT_NAME = "bench-trivial"
AGENTS = {
    "sh": ["/bin/sh", "-c", 'read -r m; echo "$m" >> "$BENCH_RECORD"; echo "$m"'],
    "python": [sys.executable, "-S", str(Path(__file__).resolve().parent / "trivial_agent.py")],
}
SIDES = ("bare", "agx", "rest", "bulk")
TERMINAL = ("completed", "failed", "cancelled")
#: CPU columns, by process kind (see bench.measure.cpu_snapshot)
KINDS = ("api", "workers", "agents", "postgres", "redis", "rabbitmq", "bench")


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
    claimed: float = math.nan  # started_at
    agent_start: float = math.nan  # the Python agent's own stamps
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
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s under load by process kind
    submit_span: float = math.nan  # s from the first submit call to the last return

    @property
    def finished(self) -> int:
        return sum(r.status in TERMINAL for r in self.load)

    @property
    def rate(self) -> float:
        return self.finished / self.wall if self.wall else math.nan

    @property
    def submit_rate(self) -> float:
        """Submissions per second while the submitters ran (first call to last return)."""
        return len(self.load) / self.submit_span if self.submit_span > 0 else math.nan


def merged(rounds: list[Result]) -> Result:
    """One side's rounds as one result: the runs together (their messages told apart by
    round), wall time, submit time and CPU summed, so exec/s is every round's executions over
    every round's time."""
    total = Result(rounds[0].name, wall=0.0, submit_span=0.0)
    for k, r in enumerate(rounds):
        for run in r.idle + r.load:
            run.message = f"{k}:{run.message}"
        total.idle += r.idle
        total.load += r.load
        total.wall += r.wall
        total.submit_span += r.submit_span
        total.runs_per_message.update({f"{k}:{m}": n for m, n in r.runs_per_message.items()})
        total.leftover += r.leftover
        for kind, seconds in r.cpu.items():
            total.cpu[kind] = total.cpu.get(kind, 0.0) + seconds
    return total


def _parse_output(run: Run, output: str | None) -> None:
    try:
        start, end = (output or "").split("\n", 1)[0].split()
        run.agent_start, run.agent_end = float(start), float(end)
    except ValueError:
        pass


class Side:
    """Start workers, submit, read the rows back; subclassed for each submit path."""

    name = ""
    table = ""

    def __init__(self, args: argparse.Namespace, tag: str, workdir: Path):
        self.args, self.tag, self.workdir = args, tag, workdir
        self.record = workdir / f"{self.name}.record"
        self.agent_argv = AGENTS[args.agent]
        self.proc = None
        self.log = workdir / f"{self.name}-workers.log"
        self._db = threading.local()
        self.cpu: dict[str, float] = {}

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

    def submit_batch(self, messages: list[str]) -> list[str]:
        """Submit several messages (one call each unless the side has a bulk call)."""
        return [self.submit(m) for m in messages]

    def fetch(self, keys: list[str]) -> dict[str, tuple]:
        raise NotImplementedError

    def groups(self) -> dict[str, int]:
        """The process groups whose CPU this side counts (kind -> pgid)."""
        return {"workers": self.proc.pid} if self.proc else {}

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
            lambda: queue_info(self.args.amqp_url, self.queue())[1] >= self.args.processes,
            60,
            f"{self.name} workers to consume",
            interval=0.2,
            logs=self.logs,
        )

    def stop_workers(self) -> None:
        """Stop the pool's process group, then any agent it started that is still alive.

        Ctrl-C and SIGTERM are held off meanwhile, so a second one cannot cut the cleanup.
        agx starts agents in sessions of their own, so the pool's group does not cover them:
        they are found by the record file named in their environment."""
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            if self.proc is not None:
                procs.stop(self.proc, grace_seconds=10)
                self.proc = None
            kill_marked(f"BENCH_RECORD={self.record}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def _batch(self, messages: list[str]) -> list[Run]:
        submitted = time.time()
        keys = self.submit_batch(messages)
        returned = time.time()
        return [Run(k, m, submitted, returned) for k, m in zip(keys, messages, strict=True)]

    def _pending(self, keys: set[str]) -> set[str]:
        """Those of `keys` whose row is not terminal yet."""
        rows = (
            self.conn()
            .execute(
                f"SELECT id FROM {self.table} WHERE id = ANY(%s) AND status = ANY(%s)",
                (list(keys), list(TERMINAL)),
            )
            .fetchall()
        )
        return keys.difference(r[0] for r in rows)

    def wait_terminal(
        self, keys: list[str], timeout: float, interval: float, stall: float | None = None
    ) -> set[str]:
        """Wait until every row is terminal; return the ones that are not (timeout or stall)."""
        pending = set(keys)
        progress = [time.monotonic(), len(pending)]
        checked = [time.monotonic()]

        def done() -> bool:
            pending.intersection_update(self._pending(pending))
            now = time.monotonic()
            if len(pending) < progress[1]:
                progress[:] = [now, len(pending)]
            elif stall and now - progress[0] > stall:
                raise TimedOut(f"no {self.name} execution finished for {stall:.0f} s")
            if stall and pending and now - checked[0] > 5:
                checked[0] = now
                self._check_storm()
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

    def _check_storm(self) -> None:
        depth = queue_info(self.args.amqp_url, self.queue())[0]
        if depth > self.args.max_queue:
            raise TimedOut(f"{depth} messages in {self.queue()} (> --max-queue): a message storm")

    def collect(self, runs: list[Run]) -> None:
        rows = self.fetch([r.key for r in runs])
        for run in runs:
            status, attempt, claimed, completed, output, error = rows[run.key]
            run.status, run.attempt, run.error = status, attempt, error
            run.claimed = claimed.timestamp() if claimed else math.nan
            run.completed = completed.timestamp() if completed else math.nan
            _parse_output(run, output)

    def warm_up(self) -> None:
        n = 2 * self.args.processes * self.args.threads
        runs = [run for i in range(n) for run in self._batch([f"warm-{i}"])]
        self.wait_terminal([r.key for r in runs], 120, 0.05)

    def idle(self, samples: int) -> list[Run]:
        runs = []
        for i in range(samples):
            run = self._batch([f"idle-{i}"])[0]
            self.wait_terminal([run.key], 60, 0.002)
            runs.append(run)
            time.sleep(0.05)  # let the worker finish its bookkeeping: truly idle next time
        self.collect(runs)
        return runs

    def _submit_all(self, count: int) -> list[Run]:
        """Submit `count` messages from --submit-threads threads, in calls of --batch."""
        size = self.args.batch if isinstance(self, BulkSide) else 1
        chunks = [
            [f"load-{i}" for i in range(s, min(s + size, count))] for s in range(0, count, size)
        ]
        runs: list[list[Run]] = [[] for _ in chunks]
        errors: list[BaseException] = []
        threads = self.args.submit_threads

        def submitter(k: int) -> None:
            try:
                for i in range(k, len(chunks), threads):
                    runs[i] = self._batch(chunks[i])
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if errors:
            raise errors[0]
        return [run for chunk in runs for run in chunk]

    def load(self, count: int) -> tuple[list[Run], float]:
        before = cpu_snapshot(self.groups(), agents_of="workers")
        done = self._submit_all(count)
        unfinished = self.wait_terminal(
            [r.key for r in done], self.args.timeout, 0.2, stall=self.args.stall
        )
        end = time.time()
        after = cpu_snapshot(self.groups(), agents_of="workers")
        self.cpu = {k: after.get(k, 0.0) - v for k, v in before.items()}
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
            if result.load:
                first = min(r.submitted for r in result.load)
                result.submit_span = max(r.returned for r in result.load) - first
            result.cpu = self.cpu
            if self.record.exists():
                result.runs_per_message = Counter(
                    line.split()[0] for line in self.record.read_text().splitlines() if line
                )
            time.sleep(1)  # let stray (duplicate) messages land before counting them
            result.leftover = queue_info(self.args.amqp_url, self.queue())[0]
        finally:
            self.stop_workers()
            self.close()
        return result


class AgxSide(Side):
    """agx through `producer.submit_execution`, in this process."""

    name = "agx"
    table = "executions"

    def prepare(self) -> None:
        a = self.args
        fresh_database(a.db_url)
        self.settings = Settings(
            database_url=normalize_database_url(a.db_url),
            redis_url=a.redis_url,
            broker_url=a.amqp_url,
            home=self.workdir / "agx-home",
            queue=self.queue(),
        )
        redis.Redis.from_url(a.redis_url).flushdb()  # db 14 is the bench's own
        self.services = Services(self.settings, pool_size=a.submit_threads + 2)
        with self.services.Session.begin() as session:
            session.add(
                Agent(
                    name=AGENT_NAME,
                    command=self.agent_argv,
                    output="text",
                    max_parallel_tasks=a.processes * a.threads,
                    timeout_seconds=300,
                    queue_limit=a.count + 1000,
                    env={"BENCH_RECORD": str(self.record)},
                )
            )

    def queue(self) -> str:
        return f"agx-bench-{self.tag}-{self.name}"

    def worker_argv(self) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "agx",
            "workers",
            "--processes",
            str(a.processes),
            "--threads",
            str(a.threads),
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
                "SELECT id, status, attempt, started_at, completed_at, response, error "
                "FROM executions WHERE id = ANY(%s)",
                (keys,),
            )
            .fetchall()
        )
        return {r[0]: r[1:] for r in rows}

    def close(self) -> None:
        if hasattr(self, "services"):
            self.services.close()


class RestSide(AgxSide):
    """agx through `POST /api/agents/{name}/task` to `agx api` with its default settings,
    one keep-alive HTTP connection per submitting thread."""

    name = "rest"

    def prepare(self) -> None:
        from shared.store.keys import create_key

        super().prepare()
        with self.services.Session.begin() as session:
            self.key = create_key(session, f"bench-{self.tag}")
        self.port = free_port()
        self.api_log = self.workdir / f"{self.name}-api.log"
        with open(self.api_log, "wb") as log:
            argv = [sys.executable, "-m", "agx", "api", "--port", str(self.port)]
            argv += self.args.api_args.split()  # none: `agx api`'s defaults
            self.api = procs.spawn(argv, env=self.worker_env(), log=log.fileno())
        wait_until(self._healthy, 60, "agx api", interval=0.1, logs=self.logs)

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def groups(self) -> dict[str, int]:
        return {**super().groups(), "api": self.api.pid}

    def _post(self, path: str, body: dict) -> dict:
        conn = getattr(self._db, "http", None)
        if conn is None or conn.port != self.port:  # none yet, or to an earlier round's API
            conn = self._db.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST {path}: {resp.status} {answer[:300]!r}")
        return json.loads(answer)

    def submit(self, message: str) -> str:
        return self._post(f"/api/agents/{AGENT_NAME}/task", {"message": message})["execution_id"]

    def close(self) -> None:
        if hasattr(self, "api"):
            procs.stop(self.api, grace_seconds=10)
        super().close()


class BulkSide(RestSide):
    """agx through `POST /api/agents/{name}/tasks`, --batch tasks per call."""

    name = "bulk"

    def submit_batch(self, messages: list[str]) -> list[str]:
        body = {"tasks": [{"message": m} for m in messages]}
        items = self._post(f"/api/agents/{AGENT_NAME}/tasks", body)["items"]
        return [item["execution_id"] for item in items]


class BareSide(Side):
    """The bare Dramatiq peer (bench/bare_peer.py), submitting from this process."""

    name = "bare"
    table = "bench_bare_runs"

    def prepare(self) -> None:
        env = self._bench_env()
        os.environ.update(env)  # read by bench.bare_peer at import; not for the other sides
        try:
            from bench import bare_peer
        finally:
            for name in env:
                os.environ.pop(name, None)
        self.peer = bare_peer
        self.conn().execute("DROP TABLE IF EXISTS bench_bare_runs")
        self.conn().execute(bare_peer.TABLE_DDL)
        self.broker = bare_peer.make_broker(self.args.amqp_url)

    def _bench_env(self) -> dict[str, str]:
        return {
            "BENCH_BROKER_URL": self.args.amqp_url,
            "BENCH_DATABASE_URL": self.args.db_url,
            "BENCH_QUEUE": self.queue(),
            "BENCH_AGENT_ARGV": json.dumps(self.agent_argv),
            "BENCH_RECORD": str(self.record),
        }

    def queue(self) -> str:
        return f"bench-bare-{self.tag}"

    def worker_argv(self) -> list[str]:
        a = self.args
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "bench.bare_peer",
            "--processes",
            str(a.processes),
            "--threads",
            str(a.threads),
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
                "SELECT id, status, attempt, started_at, completed_at, output, "
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
            ["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{git('rev-parse', '--short', 'HEAD')}{' (+ uncommitted changes)' if dirty else ''}"


def claims(runs: list[Run]) -> list[float]:
    """Dispatch latencies: the row's started_at (the worker claimed it) - the submit time."""
    return [r.claimed - r.submitted for r in runs if not math.isnan(r.claimed)]


def report(results: list[Result], args: argparse.Namespace) -> None:
    """Print the comparison of the sides, the CPU split, the targets, the steps, the checks."""
    print(f"\ntree: {tree_version()}")
    print(
        f"{args.count} executions per side and round, {args.rounds} rounds, workers --processes "
        f"{args.processes} --threads {args.threads}, {args.submit_threads} submit threads, "
        f"bulk --batch {args.batch}, "
        f"{os.cpu_count()} CPUs; agent: {' '.join(AGENTS[args.agent])}\n"
    )
    _print_table(results)
    _print_cpu(results)
    _print_targets(results)
    for r in results:
        breakdown(r)
    failed = [r.name for r in results if not verify(r)]
    if failed:
        raise SystemExit(f"correctness FAILED for {', '.join(failed)}")


def _print_table(results: list[Result]) -> None:
    """One row per side: throughput, submit rate and dispatch latencies."""
    head = (
        f"{'side':<6}{'count':>7}{'wall s':>9}{'exec/s':>9}{'submit/s':>10}"
        f"{'claim p50':>11}{'claim p99':>11}{'idle claim p50':>16}{'idle claim p90':>16}"
    )
    print(head + "\n" + "-" * len(head))
    for r in results:
        load, idle = claims(r.load), claims(r.idle)
        count = f"{r.finished}" if r.finished == len(r.load) else f"{r.finished}/{len(r.load)}"
        print(
            f"{r.name:<6}{count:>7}{r.wall:>9.2f}{r.rate:>9.1f}{r.submit_rate:>10.1f}"
            f"{ms(pct(load, 50)):>11}{ms(pct(load, 99)):>11}"
            f"{ms(pct(idle, 50)):>16}{ms(pct(idle, 90)):>16}"
        )
    print(
        "exec/s = finished / (last completed - first submit); submit/s = submissions / (last "
        "submit return - first submit call); claim = row started_at - submit, in ms\n"
    )


def _print_cpu(results: list[Result]) -> None:
    """CPU per execution under load by process kind, and leftover queued messages."""
    head = f"{'CPU ms/execution':<18}" + "".join(f"{k:>10}" for k in KINDS) + f"{'machine':>10}"
    print(head + "\n" + "-" * len(head))
    for r in results:
        n = max(r.finished, 1)
        cells = "".join(
            f"{r.cpu[k] / n * 1000:>10.2f}" if k in r.cpu else f"{'-':>10}" for k in KINDS
        )
        print(f"{r.name:<18}{cells}{r.cpu.get('machine', math.nan) / n * 1000:>10.2f}")
    print(
        "(workers: the pool's own processes; agents: the agent processes they ran; services: "
        "every process of theirs, so other load on the machine shows there and in machine)"
    )
    for r in results:
        if r.leftover:
            print(f"{r.name}: {r.leftover} messages still queued once every row was terminal")


def _verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "FAIL"


def _print_targets(results: list[Result]) -> None:
    """The ratios and the idle dispatch latency against their targets."""
    by = {r.name: r for r in results}
    print()
    if "agx" in by and "bare" in by:
        ratio = by["agx"].rate / by["bare"].rate
        print(
            f"agx producer / bare throughput = {ratio:.2f}  (target >= 1.0: "
            f"{_verdict(ratio, 1.0)}; stretch 1.3)"
        )
    if "rest" in by and "agx" in by:
        ratio = by["rest"].rate / by["agx"].rate
        print(
            f"agx REST / agx producer throughput = {ratio:.2f}  (target >= 0.8: "
            f"{_verdict(ratio, 0.8)})"
        )
    if "bulk" in by and "bare" in by:
        ratio = by["bulk"].submit_rate / by["bare"].submit_rate
        print(f"agx bulk / bare submit rate = {ratio:.2f}  (target >= 2.0: {_verdict(ratio, 2.0)})")
    if "agx" in by and by["agx"].idle:
        p50 = pct(claims(by["agx"].idle), 50)
        print(
            f"agx producer idle dispatch p50 (claim) = {ms(p50)} ms  (target <= 5: "
            f"{'PASS' if p50 <= 0.005 else 'FAIL'})"
        )


def breakdown(r: Result) -> None:
    """Where the time goes per execution, p50 in ms, idle and under load."""
    steps = [
        ("submit call", lambda x: x.returned - x.submitted),
        ("submit return -> claim", lambda x: x.claimed - x.returned),
        ("claim -> agent start", lambda x: x.agent_start - x.claimed),
        ("agent start -> agent end", lambda x: x.agent_end - x.agent_start),
        ("claim -> completed", lambda x: x.completed - x.claimed),
        ("submit -> completed", lambda x: x.completed - x.submitted),
    ]
    print(f"\n{r.name}: per-execution steps (ms)   idle p50   idle p90   load p50   load p99")
    for label, f in steps:
        idle = [v for v in map(f, r.idle) if not math.isnan(v)]
        load = [v for v in map(f, r.load) if not math.isnan(v)]
        if idle or load:
            print(
                f"  {label:<30}{ms(pct(idle, 50)):>9}{ms(pct(idle, 90)):>11}"
                f"{ms(pct(load, 50)):>11}{ms(pct(load, 99)):>11}"
            )


def verify(r: Result) -> bool:
    """Every execution completed at its first attempt, its agent started exactly once."""
    runs = r.idle + r.load
    bad = [x for x in runs if x.status != "completed" or x.attempt != 1]
    started = [r.runs_per_message.get(x.message, 0) for x in runs]
    twice = sum(1 for n in started if n > 1)
    never = sum(1 for n in started if n == 0)
    ok = not bad and not twice and not never
    print(
        f"\n{r.name} correctness: {len(runs)} executions ({len(r.idle)} idle + {len(r.load)} "
        f"load): {sum(x.status == 'completed' for x in runs)} completed, "
        f"{sum(x.attempt == 1 for x in runs)} with attempt == 1, agent started exactly once "
        f"for {sum(n == 1 for n in started)} (twice+: {twice}, never: {never}) -> "
        f"{'OK' if ok else 'FAILED'}"
    )
    for x in bad[:5]:
        print(f"  {x.key}: status={x.status} attempt={x.attempt} error={x.error!r}")
    return ok


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="executions under load per side")
    p.add_argument("--processes", type=int, default=2, help="worker processes (every side)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker process")
    p.add_argument(
        "--idle-samples",
        type=int,
        default=50,
        help="one-at-a-time executions for idle dispatch latency (0: skip)",
    )
    p.add_argument("--submit-threads", type=int, default=8, help="concurrent submitters")
    p.add_argument("--batch", type=int, default=500, help="tasks per bulk call (bulk side)")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated: {','.join(SIDES)}")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times each side runs, every other round in reverse order (figures: all rounds)",
    )
    p.add_argument("--agent", choices=sorted(AGENTS), default="sh", help="the agent program")
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
    p.add_argument(
        "--api-args", default="", help="extra `agx api` options, e.g. '--workers 2' (rest, bulk)"
    )
    args = p.parse_args(argv)
    args.db_url = libpq_url(args.db_url)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(args.sides) - set(SIDES):
        p.error(f"--sides: unknown {', '.join(sorted(unknown))}")
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


SIDE_CLASSES: dict[str, type[Side]] = {
    "bare": BareSide,
    "agx": AgxSide,
    "rest": RestSide,
    "bulk": BulkSide,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="agx-bench-"))
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` below stops its workers.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # even if started ignored
        signal.signal(sig, _interrupt)
    ensure_database(args.db_url)
    sides = [SIDE_CLASSES[name](args, tag, workdir) for name in args.sides]
    rounds: dict[str, list[Result]] = {side.name: [] for side in sides}
    try:
        for k in range(args.rounds):  # every other round in reverse: no side always goes first
            for side in sides if k % 2 == 0 else sides[::-1]:
                waited = settle(args.db_url)
                print(
                    f"[{side.name}] round {k + 1}: settled in {waited:.1f} s; running (logs in "
                    f"{workdir}) ...",
                    flush=True,
                )
                result = side.run()
                rounds[side.name].append(result)
                print(f"[{side.name}] round {k + 1}: {result.rate:.1f} exec/s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping workers and deleting the bench queues", file=sys.stderr)
        return 130
    finally:
        cleanup(args, sides, workdir)
    report([merged(rounds[side.name]) for side in sides], args)
    return 0


def cleanup(args: argparse.Namespace, sides: list[Side], workdir: Path) -> None:
    """Stop every pool, delete the queues and the temp dir; signals wait until it is done."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    for side in sides:
        side.stop_workers()
        side.close()
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
