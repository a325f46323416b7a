"""`agx schedules ...` (through the REST API) and `agx scheduler` (the cron service)."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from agx.client import call
from shared.states import Overlap


def _line(item: dict[str, Any]) -> str:
    state = "on " if item["enabled"] else "off"
    return (
        f"{item['id']}  {item['agent_name']:<16} {state} {item['cron']:<18} "
        f"{item['timezone']:<18} next {item['next_run_at'] or '-':<25} {item['name'][:40]!r}"
    )


@click.group()
def schedules() -> None:
    """Manage cron schedules."""


@schedules.command("add")
@click.argument("agent")
@click.argument("cron")
@click.argument("message", required=False)
@click.option("--name", default=None, help="Defaults to the message's first line.")
@click.option(
    "--timezone",
    "--tz",
    "timezone",
    default="UTC",
    show_default=True,
    help="IANA zone, like Europe/Berlin.",
)
@click.option("--model", default=None)
@click.option(
    "--overlap",
    type=click.Choice([o.value for o in Overlap]),
    default=Overlap.skip.value,
    show_default=True,
    help="What a fire does while the previous run is in flight.",
)
@click.option(
    "--misfire-grace",
    "grace",
    type=int,
    default=300,
    show_default=True,
    help="Seconds late a fire may still run (after schedulers were down).",
)
@click.option("--paused", is_flag=True, help="Create it disabled.")
@click.option(
    "--from-execution",
    "from_execution",
    default=None,
    help="Repeat this execution's message and model (Make Repeatable).",
)
def add(
    agent: str,
    cron: str,
    message: str | None,
    name: str | None,
    timezone: str,
    model: str | None,
    overlap: str,
    grace: int,
    paused: bool,
    from_execution: str | None,
) -> None:
    """Schedule MESSAGE for AGENT on CRON (standard 5 fields, e.g. '0 9 * * mon-fri')."""
    if message is None and from_execution is None:
        raise click.UsageError("give MESSAGE or --from-execution ID")
    body = {
        "cron": cron,
        "timezone": timezone,
        "message": message,
        "name": name,
        "model": model,
        "overlap": overlap,
        "misfire_grace_seconds": grace,
        "enabled": not paused,
        "from_execution_id": from_execution,
    }
    created = call(
        "POST", f"/api/agents/{agent}/schedules", {k: v for k, v in body.items() if v is not None}
    )
    click.echo(_line(created))


@schedules.command("ls")
@click.option("--agent", default=None)
def ls(agent: str | None) -> None:
    """List schedules (of one agent with --agent)."""
    data = call("GET", f"/api/agents/{agent}/schedules" if agent else "/api/schedules")
    for item in data["items"]:
        click.echo(_line(item))


@schedules.command("show")
@click.argument("schedule_id")
def show(schedule_id: str) -> None:
    """Print one schedule with its latest fires."""
    click.echo(json.dumps(call("GET", f"/api/schedules/{schedule_id}"), indent=2))


@schedules.command("rm")
@click.argument("schedule_id")
def rm(schedule_id: str) -> None:
    """Delete a schedule."""
    call("DELETE", f"/api/schedules/{schedule_id}")
    click.echo(f"deleted {schedule_id}")


@schedules.command("pause")
@click.argument("schedule_id")
def pause(schedule_id: str) -> None:
    """Stop a schedule firing (schedulers notice within 2 s)."""
    click.echo(_line(call("PATCH", f"/api/schedules/{schedule_id}", {"enabled": False})))


@schedules.command("resume")
@click.argument("schedule_id")
def resume(schedule_id: str) -> None:
    """Let a paused schedule fire again, from its next due time."""
    click.echo(_line(call("PATCH", f"/api/schedules/{schedule_id}", {"enabled": True})))


@click.command()
@click.option(
    "--poll-seconds",
    default=1.0,
    show_default=True,
    help="How often schedule changes are read from the database.",
)
@click.option("--threads", default=10, show_default=True, help="Fires handled at once.")
@click.option("--metrics-port", type=int, default=None, help="Serve /metrics on this port.")
def scheduler(poll_seconds: float, threads: int, metrics_port: int | None) -> None:
    """Run the cron service: fire enabled schedules (any number of these may run)."""
    from scheduler import SchedulerService
    from shared.fleet import Presence
    from shared.metrics import serve
    from shared.services import Services
    from shared.settings import Settings

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    services = Services(Settings.from_env().require(), pool_size=threads + 2)
    service = SchedulerService(
        services,
        poll_seconds=poll_seconds,
        threads=threads,
        allow_seconds=services.settings.cron_seconds,
    )
    Presence(services.redis, "scheduler").start()
    serve(metrics_port)
    try:
        service.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        services.close()
