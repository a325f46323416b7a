"""The `agx` command: run the services, and talk to a running agx from a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

from agx.chat_cli import chat
from agx.client import ApiError, Client, call
from agx.schedules_cli import scheduler, schedules
from agx.status_cli import status
from shared.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


@contextmanager
def _services() -> Iterator[Any]:
    from shared.services import Services

    services = Services(_settings().require(), pool_size=4)
    try:
        yield services
    finally:
        services.close()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(verbose: bool) -> None:
    """agx: run AI-agent executions on a distributed job queue."""
    from shared.logs import configure

    configure(logging.DEBUG if verbose else logging.INFO)


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the latest migration."""
    from shared.db import migrate as run

    settings = _settings().require()
    run(settings.database_url or "")
    click.echo("database is up to date")


def api_processes(cpus: int) -> int:
    """`agx api`'s default count of gunicorn processes: half the CPUs, 1 to 8.

    The API mostly shares its host with workers, agents and the databases (`agx up`, a small
    fleet). Measured on a 2-core box running everything: one API process let a burst of REST
    submissions queue up, so runs took slots from the releasing threads instead of each
    travelling through RabbitMQ, and served 20-25% more executions per second than two
    (each request costs the same in one process as in two, about 1.5 ms). A host of its own
    wants `--workers` set to its CPU count."""
    return max(1, min(cpus // 2, 8))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option(
    "--workers",
    "procs",
    type=click.IntRange(min=1),
    default=lambda: api_processes(os.cpu_count() or 1),
    show_default="half the CPUs, 1 to 8",
    help="gunicorn processes (stream limits and the key cache are per process)",
)
@click.option("--threads", default=32, show_default=True)
def api(host: str, port: int, procs: int, threads: int) -> None:
    """Serve the REST API, streams and pages (gunicorn, threaded)."""
    from agx.serve import ApiServer
    from shared.multiproc import forget_tree, prepare_multiproc

    _settings().require()
    samples = prepare_multiproc("api")  # before gunicorn forks its workers
    try:
        ApiServer(f"{host}:{port}", procs, threads).run()
    finally:
        forget_tree(samples)


@main.command()
@click.option("--processes", "-p", default=2, show_default=True)
@click.option("--threads", "-t", default=8, show_default=True)
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics on this port.")
def workers(processes: int, threads: int, metrics_port: int | None) -> None:
    """Run a Dramatiq worker pool consuming executions (SIGTERM drains it: README)."""
    from shared.multiproc import forget_tree, prepare_multiproc

    settings = _settings().require()
    samples = prepare_multiproc("workers")  # before the pool's processes start
    from shared.metrics import serve  # after: prometheus-client reads the folder on import

    serve(metrics_port)
    env = dict(os.environ)
    # Prefetch no more than a process can start: parked executions wait in Redis, not here.
    env.setdefault("dramatiq_queue_prefetch", str(threads))
    env["AGX_WORKER_THREADS"] = str(threads)  # what each process reports as its capacity
    if not settings.effective_broker_url.startswith("amqp"):
        # Dramatiq's Redis broker polls, backing off up to this many ms: keep promotion prompt.
        env.setdefault("dramatiq_worker_timeout", "20")
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.main",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",  # the drain's grace, then time to record the rest
        str(int((settings.drain_seconds + 30) * 1000)),
    ]
    from agx.pool import run_pool

    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(samples)}
    try:
        code = run_pool(argv, env)
    finally:
        forget_tree(samples)
    sys.exit(code)


@main.command()
@click.option("--interval", default=2.0, show_default=True, help="seconds between sweeps")
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics on this port.")
def reaper(interval: float, metrics_port: int | None) -> None:
    """Re-dispatch lost submissions, fail runs whose worker died, promote waiters."""
    import signal
    import threading

    from shared.fleet import Presence
    from shared.metrics import serve
    from workers.reaper import run_forever

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _services() as services, suppress(KeyboardInterrupt):
        Presence(services.redis, "reaper").start()
        serve(metrics_port)
        run_forever(services, interval, stop)


@main.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--processes", default=1, show_default=True, help="worker processes")
@click.option("--threads", default=8, show_default=True, help="threads per worker process")
def up(port: int, host: str, processes: int, threads: int) -> None:
    """Start everything on this machine (embedded PostgreSQL/Redis where no URL is set)."""
    from agx.up import run_up

    sys.exit(run_up(_settings(), host=host, port=port, processes=processes, threads=threads))


@main.command()
@click.argument("agent")
@click.argument("message", required=False)
@click.option("--model", default=None)
@click.option("--timeout", "timeout_seconds", type=int, default=None)
@click.option("--follow", "-f", is_flag=True, help="Wait and print the result.")
@click.option(
    "--file",
    "messages",
    type=click.File(encoding="utf-8"),
    help="Submit every non-empty line of this file as a task, in bulk ('-': stdin).",
)
def task(
    agent: str,
    message: str | None,
    model: str | None,
    timeout_seconds: int | None,
    follow: bool,
    messages: Any,
) -> None:
    """Submit a task to AGENT (or, with --file, one task per line)."""
    client = Client()
    if messages is not None:
        lines = [line.rstrip("\n") for line in messages if line.strip()]
        try:
            for item in client.submit_many(agent, lines, model):
                click.echo(item["execution_id"])
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        return
    if message is None:
        raise click.UsageError("give a MESSAGE, or --file with one message per line")
    body = {"message": message, "model": model, "timeout_seconds": timeout_seconds}
    data = call(
        "POST",
        f"/api/agents/{agent}/task",
        {k: v for k, v in body.items() if v is not None},
        client=client,
    )
    if not follow:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"execution {data['execution_id']} {data['status']}", err=True)
    sys.exit(_follow(client, data["execution_id"]))


@main.command()
@click.argument("execution_id")
def tail(execution_id: str) -> None:
    """Follow an execution live (replaying what came before); exit with its outcome."""
    sys.exit(_follow(Client(), execution_id))


@main.command()
@click.argument("execution_id")
def stop(execution_id: str) -> None:
    """Stop an execution: a pending one is cancelled, a running one is killed."""
    client = Client()
    agent = _agent_of(client, execution_id)
    data = call("POST", f"/api/agents/{agent}/executions/{execution_id}/stop", client=client)
    click.echo(
        f"{execution_id} {data['status']}"
        + (" (stop requested)" if data["status"] == "running" else "")
    )


def _agent_of(client: Client, execution_id: str) -> str:
    params = {"q": execution_id, "limit": 1}
    found = call("GET", "/api/executions", params=params, client=client)
    if not found["items"] or found["items"][0]["id"] != execution_id:
        raise click.ClickException(f"execution {execution_id} not found")
    return str(found["items"][0]["agent_name"])


def _follow(client: Client, execution_id: str) -> int:
    """Print the live transcript readably; returns 0 completed, 1 failed, 2 cancelled."""
    from agx.render import EXIT_CODES, render_event

    status = "failed"
    try:
        for event in client.events(execution_id):
            if event["type"] == "end":
                status = event.get("status") or status
                break
            text = render_event(event)
            if text is not None:
                click.echo(text, err=event["type"] == "status")
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"stream from {client.url} broke: {exc}") from None
    return EXIT_CODES.get(status, 1)


@main.command("ls")
@click.option("--agent", default=None)
@click.option("--status", default=None)
@click.option("--trigger", default=None)
@click.option("--since", default=None, help="ISO 8601 time")
@click.option("--limit", default=20, show_default=True)
def ls(
    agent: str | None, status: str | None, trigger: str | None, since: str | None, limit: int
) -> None:
    """List recent executions, newest first."""
    data = call(
        "GET",
        "/api/executions",
        params={
            "agent": agent,
            "status": status,
            "trigger": trigger,
            "since": since,
            "limit": limit,
        },
    )
    for item in data["items"]:
        cost = f"${item['cost']:.4f}" if item["cost"] is not None else "-"
        click.echo(
            f"{item['id']}  {item['agent_name']:<16} {item['status']:<10} "
            f"{item['triggered_by']:<8} {item['created_at']}  {cost}  "
            f"{item['message'][:40]!r}"
        )


@main.group()
def agents() -> None:
    """Manage agents."""


@agents.command("apply")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def agents_apply(path: Path) -> None:
    """Create or update the agents listed in a YAML file (idempotent)."""
    from agx.apply import apply_file

    with _services() as services:
        changes = apply_file(services, path)
    for name, change in changes:
        click.echo(f"{change:<9} {name}")


@main.group()
def keys() -> None:
    """Manage API keys."""


def _key_name(_ctx: Any, _param: Any, value: str) -> str:
    from shared.apikeys import KEY_NAME, KEY_NAME_RULE

    if not KEY_NAME.fullmatch(value):
        raise click.BadParameter(KEY_NAME_RULE)
    return value


@keys.command("create")
@click.argument("name", callback=_key_name)
@click.option("--agent", "agent_names", multiple=True, help="Scope the key to this agent.")
def keys_create(name: str, agent_names: tuple[str, ...]) -> None:
    """Create an API key (admin, or scoped with --agent) and print it once."""
    from shared.store.keys import create_key

    with _services() as services, services.Session.begin() as session:
        key = create_key(session, name, list(agent_names))
    click.echo(key)


main.add_command(schedules)
main.add_command(scheduler)
main.add_command(chat)
main.add_command(status)
