"""`agx status [--json]`: agents, live processes and the broker queue; exit 1 on a problem."""

from __future__ import annotations

import json
import sys
import time

import click

from shared.status import Status, collect


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def status(as_json: bool) -> None:
    """What the fleet is doing; exits 1 when something needs a look."""
    from agx.cli import _services

    with _services() as services:
        found = collect(services)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2, default=str))
    else:
        click.echo(render(found))
    sys.exit(1 if found.problems else 0)


def render(found: Status) -> str:
    """The status as a person reads it."""
    lines = [f"{'AGENT':20} {'SLOTS':>7} {'WAITING':>8} {'OLDEST':>8}  LAST FAILURE"]
    for a in found.agents:
        slots = "?" if a.slots_in_use is None else str(a.slots_in_use)
        oldest = "-" if a.oldest_pending_seconds is None else f"{a.oldest_pending_seconds:.0f}s"
        failure = a.last_failure["error"][:60] if a.last_failure else "-"
        waiting = "?" if a.waiting is None else str(a.waiting)
        lines.append(
            f"{a.name:20} {slots + '/' + str(a.capacity):>7} {waiting:>8} {oldest:>8}  {failure}"
        )
    lines.append("")
    kinds = (("workers", found.workers), ("schedulers", found.schedulers))
    for kind, procs in (*kinds, ("reapers", found.reapers)):
        lines.append(f"{kind}: {len(procs)} alive")
        for p in procs:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(p["started_at"])))
            busy = f" busy {p['busy']}/{p['threads']}" if "busy" in p else ""
            lines.append(f"  {p['host']} pid {p['pid']}{busy} since {since}")
    q = found.queue
    consumers = "n/a (Redis broker)" if q.get("consumers") is None else q["consumers"]
    detail = q.get("error") or f"{q['messages']} messages, consumers: {consumers}"
    lines.append(f"queue {q['name']}: {detail}")
    lines += [f"PROBLEM: {p}" for p in found.problems] or ["ok"]
    return "\n".join(lines)
