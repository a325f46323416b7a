"""Live-output fan-out: one execution printing --lines lines as fast as it can, to websockets.

    python bench/stream.py                      # 100,000 lines, 10 websocket subscribers
    python bench/stream.py --lines 5000         # quick check
    python bench/stream.py --only agx --keep-logs

Two sides, one after the other in the same run (never at once), same agent program,
same number of subscribers, same client code:

* **agx**: real `python -m agx api` (gunicorn gthread) and `python -m agx workers`
  processes. The execution is submitted while no worker runs, the subscribers connect to
  `WS /ws/executions/{id}`, and only then the workers start, so every subscriber is
  there before the first line. Path: agent stdout -> worker (runner, EventWriter, emit.lua:
  XADD + PUBLISH) -> API hub (one PSUBSCRIBE per process) -> per-client thread -> websocket.
* **bare** (`bench/stream_peer.py`): a publisher process runs the same agent, cuts its
  stdout into lines and PUBLISHes them as soon as it can (<= 500 per message, same event
  JSON, no stream); a relay process SUBSCRIBEs with redis-py and forwards each
  event as one websocket message to every client (a batch framed once, one sendall per
  client).

The agent (`python -S -c AGENT_CODE`, output `text`) writes each line with its own
`os.write` (as an agent flushing every line does), and each line carries the time it was
written: `<n> <time.time()> <padding>` (--line-bytes long). A subscriber reads raw bytes
from the socket and stamps every recv(); the frames are parsed after the run (so the
client's own parsing cost does not throttle what it measures). Latency of a line =
receive stamp of the chunk that completed its frame - the agent's write stamp.

A tap (one more plain redis-py SUBSCRIBE on the same channel, in this process) stamps each
published batch, splitting latency into write -> publish (agent pipe + worker / publisher)
and publish -> client (API / relay). `--no-tap` leaves it out.

Figures per side:
* `lines/s per client`: lines the client got / (its last line received - first line
  written); `aggregate` is the sum over the subscribers.
* `loss`: lines missing, duplicated or out of order, summed over the subscribers; each
  must have got every event id 1..N+2 exactly once, in order, then `end` (completed).
* latency p50 / p99 / max over every line of every subscriber.
* CPU seconds of the server (API / relay) and of the producer (worker + agent /
  publisher + agent) while the lines flowed.

Services (defaults; flags override): PostgreSQL database `agx_stream_bench` (created,
migrated and truncated here), Redis db 12 (flushed; db 15 is refused, the tests use it),
RabbitMQ with a fresh queue `agx-stream-<random>` (deleted at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import websocket  # noqa: E402

from agx import procs  # noqa: E402
from agx.embedded import free_port  # noqa: E402
from bench.measure import fresh_database, group_cpu, libpq_url, pct, wait_until  # noqa: E402
from shared.settings import normalize_database_url  # noqa: E402

AGENT_NAME = "bench-stream"
PEER = Path(__file__).resolve().parent / "stream_peer.py"
MARK = "BENCH_STREAM_MARK"  #: in each agent's environment, so a sweep can find leftovers

#: The agent: reads "lines=N bytes=B" on stdin, then writes N lines, one os.write each,
#: "<n> <time.time()> <padding>\n", B bytes long with the newline.
AGENT_CODE = r"""
import os, sys, time
opts = dict(p.split("=", 1) for p in sys.stdin.read().split() if "=" in p)
n, size = int(opts.get("lines", "1000")), int(opts.get("bytes", "100"))
pad = b"x" * max(0, size - 26)
w, now = os.write, time.time
for i in range(1, n + 1):
    w(1, b"%d %.6f %s\n" % (i, now(), pad))
"""
AGENT_ARGV = [sys.executable, "-S", "-c", AGENT_CODE]
END_MARK = b'"type":"end"'


# --- helpers -----------------------------------------------------------------------------------


def _marked(tag: str) -> list[int]:
    marker = f"{MARK}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(tag: str) -> None:
    """SIGKILL any agent of this run still alive (agents run in their own session)."""
    for pid in _marked(tag):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- the subscribers -------------------------------------------------------------------------


class Subscriber(threading.Thread):
    """A websocket client that only stamps and keeps raw chunks; frames are parsed later."""

    def __init__(self, url: str, header: list[str], deadline: float):
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, header=header, timeout=30)
        self.sock: socket.socket = self.ws.sock  # type: ignore[assignment]
        self.deadline = deadline
        self.chunks: list[tuple[float, bytes]] = []
        self.ended = False
        self.error: str | None = None

    def run(self) -> None:
        sock = self.sock  # websocket-client read the handshake byte by byte: nothing buffered
        sock.settimeout(1.0)
        recv, now, chunks = sock.recv, time.time, self.chunks
        tail = b""
        try:
            while True:
                try:
                    data = recv(1 << 18)
                except TimeoutError:
                    if time.monotonic() > self.deadline:
                        self.error = "timed out"
                        return
                    continue
                if not data:
                    self.error = "connection closed before end"
                    return
                chunks.append((now(), data))
                if END_MARK in data or END_MARK in tail + data[: len(END_MARK)]:
                    self.ended = True
                    return
                tail = data[-len(END_MARK) :]
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()

    def messages(self) -> list[tuple[float, bytes]]:
        """(receive time, payload) of every complete text/binary message."""
        buf = b"".join(d for _, d in self.chunks)
        ends, total = [], 0
        for _, d in self.chunks:
            total += len(d)
            ends.append(total)
        out: list[tuple[float, bytes]] = []
        pos, k, n = 0, 0, len(buf)
        pending = b""
        while pos + 2 <= n:
            b0, b1 = buf[pos], buf[pos + 1]
            length, p = b1 & 0x7F, pos + 2
            if length == 126:
                if p + 2 > n:
                    break
                length, p = struct.unpack_from("!H", buf, p)[0], p + 2
            elif length == 127:
                if p + 8 > n:
                    break
                length, p = struct.unpack_from("!Q", buf, p)[0], p + 8
            if b1 & 0x80:
                p += 4  # a masked server frame would be a protocol error; skip the key
            end = p + length
            if end > n:
                break
            while ends[k] < end:
                k += 1
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                pending += buf[p:end]
                if b0 & 0x80:
                    out.append((self.chunks[k][0], pending))
                    pending = b""
            pos = end
        return out


# --- figures ---------------------------------------------------------------------------------


@dataclass
class ClientFigures:
    lines: int = 0
    rate: float = math.nan
    lost: int = 0  # missing + duplicated + out of order
    ok: bool = False
    problem: str = ""
    latencies: list[float] = field(default_factory=list)
    recv_by_seq: dict[int, float] = field(default_factory=dict)


@dataclass
class SideResult:
    name: str
    lines: int
    subscribers: int
    clients: list[ClientFigures] = field(default_factory=list)
    first_write: float = math.nan
    last_write: float = math.nan
    tap: list[tuple[float, bytes]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for c in self.clients for x in c.latencies]

    @property
    def loss(self) -> int:
        return sum(c.lost for c in self.clients)

    @property
    def per_client(self) -> float:
        rates = [c.rate for c in self.clients if not math.isnan(c.rate)]
        return sum(rates) / len(rates) if rates else math.nan

    @property
    def aggregate(self) -> float:
        return sum(c.rate for c in self.clients if not math.isnan(c.rate))

    @property
    def write_rate(self) -> float:
        span = self.last_write - self.first_write
        return self.lines / span if span > 0 else math.nan

    def tap_split(self) -> tuple[list[float], list[float], list[int]]:
        """(write -> publish latencies, publish -> client latencies, batch sizes)."""
        published: dict[int, float] = {}
        write_to_pub: list[float] = []
        sizes: list[int] = []
        for stamp, data in self.tap:
            batch = json.loads(data)
            sizes.append(len(batch))
            for event in batch:
                if event.get("type") == "line":
                    seq, written = _seq_and_time(event["line"])
                    published[seq] = stamp
                    write_to_pub.append(stamp - written)
        pub_to_client = [
            recv - published[seq]
            for c in self.clients
            for seq, recv in c.recv_by_seq.items()
            if seq in published
        ]
        return write_to_pub, pub_to_client, sizes


def _seq_and_time(line: str) -> tuple[int, float]:
    seq, written, _ = line.split(" ", 2)
    return int(seq), float(written)


def _events(sub: Subscriber) -> Iterator[tuple[float, dict[str, Any]]]:
    """(receive time, event) for every event; agx sends a JSON array per batch."""
    for recv, payload in sub.messages():
        decoded = json.loads(payload)
        for event in decoded if isinstance(decoded, list) else [decoded]:
            yield recv, event


def analyse(sub: Subscriber, lines: int, first_id: int) -> tuple[ClientFigures, float, float]:
    """Check one subscriber's sequence and compute its figures (first/last write stamps too).

    Expected: event ids first_id .. first_id + lines + 1 (running, lines, terminal status),
    the line with id first_id + n carrying n, then `end` with status completed.
    """
    figures = ClientFigures()
    ids: list[int] = []
    first_write, last_write, last_recv = math.inf, -math.inf, -math.inf
    end = None
    for recv, event in _events(sub):
        kind = event.get("type")
        if kind == "keepalive":
            continue
        if kind == "end":
            end = event
            break
        ids.append(event["id"])
        if kind == "line":
            seq, written = _seq_and_time(event["line"])
            if event["id"] - first_id != seq:
                figures.problem = figures.problem or f"id {event['id']} carries line {seq}"
            figures.latencies.append(recv - written)
            figures.recv_by_seq[seq] = recv
            first_write, last_write = min(first_write, written), max(last_write, written)
            last_recv = max(last_recv, recv)
    figures.lines = len(figures.latencies)
    expected = list(range(first_id, first_id + lines + 2))  # running, lines, terminal
    if ids != expected:
        seen = set(ids)
        missing = len(set(expected) - seen)
        dups = len(ids) - len(seen)
        disorder = sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a)
        figures.lost = missing + dups + disorder
        figures.problem = figures.problem or (
            f"{missing} missing, {dups} duplicated, {disorder} out of order"
        )
    if end is None or end.get("status") != "completed":
        figures.problem = figures.problem or f"end: {end} ({sub.error or 'no end message'})"
        figures.lost = max(figures.lost, 1)
    figures.ok = not figures.problem
    if figures.lines and last_recv > first_write:
        figures.rate = figures.lines / (last_recv - first_write)
    return figures, first_write, last_write


class Tap(threading.Thread):
    """One more redis-py SUBSCRIBE on the channel: stamps every published batch."""

    def __init__(self, client: redis.Redis, channel: str, on_first: Callable[[], None]):
        super().__init__(daemon=True)
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.pubsub.get_message(timeout=5)  # the subscribe confirmation
        self.on_first = on_first
        self.batches: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        get, now, batches = self.pubsub.get_message, time.time, self.batches
        while not self.stop.is_set():
            message = get(timeout=0.5)
            if message is not None and message["type"] == "message":
                batches.append((now(), message["data"]))
                if len(batches) == 1:
                    self.on_first()
        self.pubsub.close()


# --- one side -----------------------------------------------------------------------------------


class Side:
    name = ""

    def __init__(self, args: argparse.Namespace, tag: str, workdir: Path):
        self.args, self.tag, self.workdir = args, tag, workdir
        self.redis = redis.Redis.from_url(args.redis_url)
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.cpu_marks: dict[str, float] = {}
        self.tap: Tap | None = None

    def run(self) -> SideResult:
        """Set up, stream the lines to the subscribers and measure, then clean up."""
        self.setup()
        self.tap = None
        try:
            result = self.stream()
            if any(not c.ok for c in result.clients):
                result.notes.append(self.logs())
            return result
        finally:
            if self.tap and self.tap.is_alive():
                self.tap.stop.set()
            self.stop_all()
            self.teardown()

    def setup(self) -> None:
        """Prepare what the side needs before anything is spawned."""

    def stream(self) -> SideResult:
        """Start the servers, connect the subscribers, produce the lines and measure them."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what `setup` prepared (after every process is stopped)."""

    def start_tap(self, channel: str, on_first: Callable[[], None]) -> None:
        """Start the tap on `channel` (`on_first` at its first batch), or call `on_first` now."""
        if self.args.no_tap:
            on_first()
            return
        self.tap = Tap(self.redis, channel, on_first)
        self.tap.start()

    def finish(self, subs: list[Subscriber]) -> SideResult:
        """Stop the tap and compute the figures of every subscriber."""
        if self.tap:
            self.tap.stop.set()
            self.tap.join(5)
        return self.collect(subs, self.tap, first_id=1)

    def spawn(self, label: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{self.name}-{label}.log", "wb") as log:
            proc = procs.spawn(argv, env=env, log=log.fileno())
        self.spawned.append(proc)
        return proc

    def stop_all(self) -> None:
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for proc in reversed(self.spawned):
                procs.stop(proc, grace_seconds=10)
            self.spawned.clear()
            kill_marked(self.tag)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def logs(self) -> str:
        out = []
        for path in sorted(self.workdir.glob(f"{self.name}-*.log")):
            text = path.read_text(errors="replace")[-3000:]
            if text.strip():
                out.append(f"--- {path.name} ---\n{text}")
        return "\n".join(out)

    def subscribe(self, url: str, header: list[str]) -> list[Subscriber]:
        """Connect every subscriber to `url`, then start their reading threads."""
        deadline = time.monotonic() + self.args.timeout
        subs = [Subscriber(url, header, deadline) for _ in range(self.args.subscribers)]
        for sub in subs:
            sub.start()
        return subs

    def collect(self, subs: list[Subscriber], tap: Tap | None, first_id: int) -> SideResult:
        result = SideResult(self.name, self.args.lines, self.args.subscribers)
        firsts, lasts = [], []
        for sub in subs:
            figures, first, last = analyse(sub, self.args.lines, first_id)
            result.clients.append(figures)
            firsts.append(first)
            lasts.append(last)
        result.first_write, result.last_write = min(firsts), max(lasts)
        result.tap = tap.batches if tap else []
        return result

    def await_subscribers(self, subs: list[Subscriber]) -> None:
        for sub in subs:
            sub.join(max(0.0, self.args.timeout))
        bad = [s.error for s in subs if not s.ended]
        if bad:
            print(f"[{self.name}] {len(bad)} subscriber(s) did not end: {bad[0]}", flush=True)


class AgxSide(Side):
    name = "agx"

    def env(self) -> dict[str, str]:
        a = self.args
        return {
            **os.environ,
            "AGX_DATABASE_URL": normalize_database_url(a.db_url),
            "AGX_REDIS_URL": a.redis_url,
            "AGX_BROKER_URL": a.amqp_url,
            "AGX_QUEUE": f"agx-stream-{self.tag}",
            "AGX_HOME": str(self.workdir / "home"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }

    def prepare(self) -> tuple[Any, str]:
        from shared.models import Agent
        from shared.rebuild import ensure_epoch
        from shared.services import Services
        from shared.settings import Settings
        from shared.store.keys import create_key

        a = self.args
        fresh_database(a.db_url)
        self.redis.flushdb()  # db 12 is this bench's own
        settings = Settings.from_env({k: v for k, v in self.env().items() if k.startswith("AGX_")})
        services = Services(settings, pool_size=2)
        ensure_epoch(services)
        with services.Session.begin() as session:
            session.add(
                Agent(
                    name=AGENT_NAME,
                    command=AGENT_ARGV,
                    output="text",
                    max_parallel_tasks=1,
                    timeout_seconds=900,
                    queue_limit=10,
                    env={MARK: self.tag},
                )
            )
            key = create_key(session, f"bench-{self.tag}")
        return services, key

    def setup(self) -> None:
        """Prepare the database, Redis and the agent; no API or worker process yet."""
        self.services, self.key = self.prepare()
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def teardown(self) -> None:
        """Close the services and delete the run's queue."""
        self.services.close()
        _delete_queue(self.args.amqp_url, f"agx-stream-{self.tag}")

    def stream(self) -> SideResult:
        """Submit while no worker runs, connect the subscribers, then start the workers."""
        from producer.submit import submit_execution
        from shared import keys

        a = self.args
        port = self.start_api()
        submitted = submit_execution(
            self.services, AGENT_NAME, f"lines={a.lines} bytes={a.line_bytes}"
        )
        eid = submitted.execution.id
        subs = self.subscribe(
            f"ws://127.0.0.1:{port}/ws/executions/{eid}", [f"Authorization: Bearer {self.key}"]
        )
        time.sleep(0.5)  # let every handler reach its hub subscription
        self.start_tap(keys.events_channel(eid), self.mark_cpu)
        self.worker = self.spawn("workers", self.worker_argv(), self.env())
        self.await_subscribers(subs)
        cpu_end = self.cpu_now()
        result = self.finish(subs)
        result.cpu = {"server (api)": cpu_end["api"] - self.cpu_marks.get("api", 0.0)}
        if "worker" in self.cpu_marks:
            result.cpu["producer (worker+agent)"] = cpu_end["worker"] - self.cpu_marks["worker"]
        result.notes.append(self.execution_note(eid))
        return result

    def start_api(self) -> int:
        """Spawn the API server (or --api-argv) on a free port; return once it is healthy."""
        a = self.args
        port = free_port()
        argv = (
            [x.replace("{port}", str(port)) for x in json.loads(a.api_argv)]
            if a.api_argv
            else [sys.executable, "-m", "agx", "api", "--port", str(port)]
        )
        self.api = self.spawn("api", argv, self.env())
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(base), 60, "the API server", 0.1)
        return port

    def worker_argv(self) -> list[str]:
        """`python -m agx workers` with the --processes and --threads of the run."""
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

    def mark_cpu(self) -> None:
        """Streaming starts: take the CPU marks (worker start-up CPU is behind us)."""
        assert self.api is not None
        self.cpu_marks["api"] = sum(group_cpu(self.api.pid))
        if self.worker:
            self.cpu_marks["worker"] = sum(group_cpu(self.worker.pid))

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds of the API and of the workers (with the agent, once it has exited)."""
        assert self.api is not None and self.worker is not None
        cpu_end = {"api": sum(group_cpu(self.api.pid))}
        # Once reaped, the agent's CPU counts in its worker process's children figures.
        try:
            wait_until(lambda: not _marked(self.tag), 10, "the agent to exit", 0.1)
        except TimeoutError as exc:
            print(f"[agx] {exc}", flush=True)
        cpu_end["worker"] = sum(group_cpu(self.worker.pid))
        return cpu_end

    def execution_note(self, eid: str) -> str:
        """The execution's final status, attempt and error, as stored."""
        from shared.models import Execution

        with self.services.Session() as session:
            row = session.get(Execution, eid)
            return f"execution {eid}: {row.status}, attempt {row.attempt}" + (
                f", error {row.error}" if row.error else ""
            )


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _delete_queue(amqp_url: str, queue: str) -> None:
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"could not delete queue {queue}: {exc}", flush=True)
        return
    try:
        channel = conn.channel()
        for name in (queue, queue + ".DQ", queue + ".XQ"):
            channel.queue_delete(name)
    finally:
        conn.close()


class BareSide(Side):
    name = "bare"

    def __init__(self, args: argparse.Namespace, tag: str, workdir: Path):
        super().__init__(args, tag, workdir)
        self.channel = f"bench:stream:{tag}"
        self.peer_env = {**os.environ, MARK: tag}
        self.relay: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        """Clear the relay's registration keys of this channel."""
        self.redis.delete(self.channel + ":clients", self.channel + ":relay")

    def teardown(self) -> None:
        """Clear the relay's registration keys again."""
        self.setup()

    def stream(self) -> SideResult:
        """Start the relay, connect the subscribers, then start the publisher."""
        channel = self.channel
        port = free_port()
        self.relay = self.spawn("relay", self.relay_argv(port), self.peer_env)
        wait_until(lambda: self.redis.get(channel + ":relay"), 30, "the relay", 0.05)
        subs = self.subscribe(f"ws://127.0.0.1:{port}/", [])
        wait_until(
            lambda: int(self.redis.get(channel + ":clients") or 0) >= len(subs),
            30,
            "the relay to register every client",
            0.01,
        )
        self.start_tap(channel, self.mark_cpu)
        self.children_cpu0 = _children_cpu()
        publisher = self.spawn("publisher", self.publisher_argv(), self.peer_env)
        self.await_subscribers(subs)
        relay_cpu = sum(group_cpu(self.relay.pid))
        with contextlib.suppress(subprocess.TimeoutExpired):
            publisher.wait(30)  # reaped here: its CPU (and its agent's) is ours now
        producer_cpu = _children_cpu() - self.children_cpu0
        result = self.finish(subs)
        result.cpu = {
            "server (relay)": relay_cpu - self.cpu_marks.get("relay", 0.0),
            "producer (publisher+agent)": producer_cpu,
        }
        return result

    def relay_argv(self, port: int) -> list[str]:
        """`stream_peer.py relay` serving websockets on `port`."""
        return [
            sys.executable,
            str(PEER),
            "relay",
            "--port",
            str(port),
            "--redis-url",
            self.args.redis_url,
            "--channel",
            self.channel,
        ]

    def publisher_argv(self) -> list[str]:
        """`stream_peer.py publish` running the agent with the run's lines and line size."""
        a = self.args
        return [
            sys.executable,
            str(PEER),
            "publish",
            "--redis-url",
            a.redis_url,
            "--channel",
            self.channel,
            "--argv",
            json.dumps(AGENT_ARGV),
            "--message",
            f"lines={a.lines} bytes={a.line_bytes}",
        ]

    def mark_cpu(self) -> None:
        """Streaming starts: take the relay's CPU mark."""
        assert self.relay is not None
        self.cpu_marks["relay"] = sum(group_cpu(self.relay.pid))


def _children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- report ------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:,.1f}"


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


Row = tuple[str, list[str], str]


def _f1(value: float) -> str:
    """`value` with one decimal, or "-" when it is NaN."""
    return "-" if math.isnan(value) else f"{value:,.1f}"


def _f2(value: float) -> str:
    """`value` with two decimals, or "-" when it is NaN."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def _row(label: str, values: list[float], fmt: Callable[[float], str], ratio: bool = False) -> Row:
    """One report row: the formatted values, and agx/bare when asked for and two sides ran."""
    r = ""
    if ratio and len(values) == 2 and values[1] and not math.isnan(values[1]):
        r = f"{values[0] / values[1]:.2f}"
    return label, [fmt(v) for v in values], r


def _flow_rows(sides: list[SideResult]) -> list[Row]:
    """Rates, loss and write -> client latency."""
    lat = [s.latencies for s in sides]
    return [
        _row("lines/s per client (mean)", [s.per_client for s in sides], _num, True),
        _row("lines/s aggregate (all clients)", [s.aggregate for s in sides], _num, True),
        _row("lines/s agent wrote", [s.write_rate for s in sides], _num, True),
        _row("loss (missing+dup+disorder)", [float(s.loss) for s in sides], _num),
        _row("latency p50 ms (write->client)", [pct(x, 50) for x in lat], _ms, True),
        _row("latency p99 ms", [pct(x, 99) for x in lat], _ms, True),
        _row("latency max ms", [max(x) if x else math.nan for x in lat], _ms, True),
    ]


def _tap_rows(sides: list[SideResult]) -> list[Row]:
    """Latency split at the publish, and the published batches, as the tap saw them."""
    splits = [s.tap_split() for s in sides]
    return [
        _row("  write->publish p50 ms", [pct(w, 50) for w, _, _ in splits], _ms),
        _row("  write->publish p99 ms", [pct(w, 99) for w, _, _ in splits], _ms),
        _row("  publish->client p50 ms", [pct(p, 50) for _, p, _ in splits], _ms),
        _row("  publish->client p99 ms", [pct(p, 99) for _, p, _ in splits], _ms),
        _row("batches published", [float(len(z)) for _, _, z in splits], _num),
        _row(
            "events per batch (mean)",
            [sum(z) / len(z) if z else math.nan for _, _, z in splits],
            _f1,
        ),
    ]


def _cpu_rows(sides: list[SideResult]) -> list[Row]:
    """Server and producer CPU seconds while the lines flowed."""
    labels = ["server CPU s (api / relay)", "producer CPU s (worker+agent / publisher+agent)"]
    return [
        _row(
            label,
            [list(s.cpu.values())[i] if len(s.cpu) > i else math.nan for s in sides],
            _f2,
            True,
        )
        for i, label in enumerate(labels)
    ]


def _print_table(names: list[str], rows: list[Row], args: argparse.Namespace) -> None:
    """The settings line, then one column per side (and agx/bare when both ran)."""
    width = max(len(r[0]) for r in rows) + 2
    head = "".join(f"{n:>14}" for n in names) + (f"{'agx/bare':>12}" if len(names) == 2 else "")
    print()
    print(
        f"{args.lines:,} lines of {args.line_bytes} bytes, {args.subscribers} websocket "
        f"subscribers, {os.cpu_count()} CPUs, load average before the run "
        f"{args.load_before:.1f}" + (f", API: {args.api_argv}" if args.api_argv else "")
    )
    print(" " * width + head)
    for label, values, ratio in rows:
        print(
            f"{label:<{width}}"
            + "".join(f"{v:>14}" for v in values)
            + (f"{ratio:>12}" if len(names) == 2 else "")
        )


def _print_notes(sides: list[SideResult]) -> None:
    """Subscribers with problems and each side's notes."""
    for s in sides:
        bad = [c.problem for c in s.clients if not c.ok]
        if bad:
            print(f"[{s.name}] {len(bad)} subscriber(s) with problems, e.g.: {bad[0]}")
        for note in s.notes:
            print(f"[{s.name}] {note}")


def _check_targets(results: dict[str, SideResult], args: argparse.Namespace) -> bool:
    """Print agx's figures against the targets; True when all pass (or agx did not run)."""
    if "agx" not in results:
        return True
    agx = results["agx"]
    p99 = pct(agx.latencies, 99)
    checks = [
        ("loss == 0", agx.loss == 0),
        (f"lines/s per client >= {args.target_rate:,}", agx.per_client >= args.target_rate),
        (f"p99 <= {args.target_p99_ms} ms", p99 * 1000 <= args.target_p99_ms),
    ]
    print(
        "agx targets: "
        + ", ".join(f"{name}: {'PASS' if good else 'FAIL'}" for name, good in checks)
    )
    return all(good for _, good in checks)


def report(results: dict[str, SideResult], args: argparse.Namespace) -> bool:
    """Print the side-by-side figures and the targets; True when agx meets them."""
    names = list(results)
    sides = [results[n] for n in names]
    rows = _flow_rows(sides)
    if not args.no_tap:
        rows += _tap_rows(sides)
    rows += _cpu_rows(sides)
    _print_table(names, rows, args)
    _print_notes(sides)
    return _check_targets(results, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags; refuses the test suite's database and Redis db."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument(
        "--line-bytes",
        type=int,
        default=100,
        help="bytes per agent line, newline included (min ~26)",
    )
    parser.add_argument("--only", choices=("agx", "bare"))
    parser.add_argument("--processes", type=int, default=1, help="agx worker processes")
    parser.add_argument("--threads", type=int, default=2, help="agx threads per worker process")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds a side may take before giving up"
    )
    parser.add_argument(
        "--no-tap", action="store_true", help="no extra subscriber splitting latency at the publish"
    )
    parser.add_argument("--target-rate", type=int, default=20_000)
    parser.add_argument("--target-p99-ms", type=float, default=100)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--api-argv",
        help="serve the agx API with this command instead, a "
        "JSON list where {port} is replaced (to try a change side by side)",
    )
    parser.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_stream_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args(argv)
    args.db_url = libpq_url(args.db_url)
    db_name = args.db_url.rpartition("/")[2].split("?")[0]
    if db_name in ("test", "postgres"):
        parser.error(f"refusing database '{db_name}': use a database of the bench's own")
    if redis.Redis.from_url(args.redis_url).connection_pool.connection_kwargs.get("db", 0) == 15:
        parser.error("refusing Redis db 15: the test suite uses it")
    return args


def run_sides(args: argparse.Namespace, tag: str, workdir: Path) -> dict[str, SideResult]:
    """Run each side asked for, one after the other; print its logs if it fails."""
    results: dict[str, SideResult] = {}
    for cls in (AgxSide, BareSide):
        if args.only and cls.name != args.only:
            continue
        print(
            f"[{cls.name}] streaming {args.lines:,} lines to {args.subscribers} subscribers ...",
            flush=True,
        )
        started = time.monotonic()
        side = cls(args, tag, workdir)
        try:
            results[cls.name] = side.run()
        except Exception:
            print(side.logs(), flush=True)
            raise
        print(f"[{cls.name}] done in {time.monotonic() - started:.1f} s", flush=True)
    return results


def remove_workdir(workdir: Path) -> None:
    """Delete the logs and the temp dir."""
    for path in workdir.rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted(workdir.rglob("*"), reverse=True):
        path.rmdir()
    workdir.rmdir()


def main(argv: list[str] | None = None) -> int:
    """Run the sides, print the report; exit 1 when agx misses a target."""
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"agx-stream-{tag}-"))
    try:
        results = run_sides(args, tag, workdir)
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            remove_workdir(workdir)
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
