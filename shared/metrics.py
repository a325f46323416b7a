"""Prometheus metrics of every agx process kind (prometheus-client, multi-process safe).

A process tree with several Python processes (the API under gunicorn, a worker pool) keeps
its samples in `PROMETHEUS_MULTIPROC_DIR`: agx sets it for the tree (shared/multiproc.py,
before any prometheus-client import in the tree, which reads it once) to a fresh folder per
tree and empties it at start. What the API serves on `/metrics`, and what
`--metrics-port` serves for workers, scheduler and reaper, is `registry()`: the samples of
every process of the tree. Gauges of slots and waiting lists are read live from Redis at
scrape time (`SlotsCollector`). Label values are bounded: agent names, triggers, statuses,
model names, route templates — never ids or messages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.multiproc import MULTIPROC_ENV

DURATIONS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCIES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

EXECUTIONS = Counter(
    "agx_executions_total", "Executions ended, by outcome", ["agent", "trigger", "status"]
)
DURATION = Histogram(
    "agx_execution_duration_seconds", "Run time of ended executions", ["agent"], buckets=DURATIONS
)
COST = Counter("agx_execution_cost_usd_total", "Cost reported by agents, USD", ["agent", "model"])
TOKENS = Counter("agx_execution_tokens_total", "Tokens reported by agents", ["agent", "kind"])
DISPATCH = Histogram(
    "agx_dispatch_latency_seconds",
    "From submission to the run's start (queueing for a slot included)",
    ["agent"],
    buckets=LATENCIES + (60, 300, 900),
)
FIRES = Counter("agx_scheduler_fires_total", "Schedule due times, by outcome", ["outcome"])
LAG = Histogram("agx_scheduler_lag_seconds", "From a due time to its submission", buckets=LATENCIES)
RECOVERIES = Counter("agx_reaper_recoveries_total", "What the reaper recovered, by kind", ["kind"])
REQUESTS = Counter("agx_http_requests_total", "API requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "agx_http_request_duration_seconds", "API request latency", ["route"], buckets=LATENCIES
)


def registry() -> CollectorRegistry:
    """What to serve: every process of the tree (multi-process mode), or this process's."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    found = CollectorRegistry()
    multiprocess.MultiProcessCollector(found)
    return found


def exposition(*extra: Collector) -> bytes:
    """The text a scrape gets: `registry()`, then the families of `extra` collectors."""
    live = CollectorRegistry()
    for collector in extra:
        live.register(collector)
    return generate_latest(registry()) + generate_latest(live)


def serve(port: int | None) -> None:
    """`--metrics-port`: serve `registry()` on this port from a background thread."""
    if port:
        start_http_server(port, registry=registry())


def process_dead(pid: int) -> None:
    """A child of the tree exited: drop its live gauges (counters stay)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def record_run(agent: str, trigger: str, status: str, fields: dict[str, Any]) -> None:
    """An execution ended: count it, with its duration, cost and tokens when it reports them."""
    EXECUTIONS.labels(agent, trigger, status).inc()
    if fields.get("duration_ms") is not None:
        DURATION.labels(agent).observe(fields["duration_ms"] / 1000)
    if fields.get("cost"):
        COST.labels(agent, fields.get("model_used") or "unknown").inc(float(fields["cost"]))
    for kind in ("input", "output"):
        if fields.get(f"{kind}_tokens"):
            TOKENS.labels(agent, kind).inc(fields[f"{kind}_tokens"])


class SlotsCollector(Collector):
    """Live gauges per agent, read from Redis (and the agents' capacity) at scrape time."""

    def __init__(self, usage: Callable[[], Iterator[tuple[str, int, Any]]]):
        self._usage = usage  #: yields (agent, capacity, Slots.usage(agent))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One family per gauge, one sample per agent."""
        names = {
            "in_use": ("agx_slots_in_use", "Slot leases held"),
            "capacity": ("agx_slots_capacity", "max_parallel_tasks"),
            "waiting": ("agx_executions_waiting", "Executions in the FIFO waiting list"),
            "oldest": ("agx_oldest_waiting_seconds", "Age of the FIFO's head"),
        }
        families = {k: GaugeMetricFamily(n, h, labels=["agent"]) for k, (n, h) in names.items()}
        now_us = time.time() * 1_000_000
        for agent, capacity, usage in self._usage():
            families["in_use"].add_metric([agent], usage.in_use)
            families["capacity"].add_metric([agent], capacity)
            families["waiting"].add_metric([agent], usage.waiting)
            head = usage.oldest_waiting_us
            families["oldest"].add_metric([agent], 0 if head is None else (now_us - head) / 1e6)
        yield from families.values()
