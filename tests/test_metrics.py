"""Metrics: values after a known set of executions, slot gauges with runs in flight, request
counts by route template, a valid exposition (promtool), and the optional scrape token."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from dataclasses import replace
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agx.embedded import free_port
from shared.models import Execution
from tests.conftest import app_client, wait_for
from tests.helpers import finished


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _submit(api_url: str, key: str, message: str) -> str:
    import json

    req = urllib.request.Request(
        f"{api_url}/api/agents/demo/task",
        data=json.dumps({"message": message}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["execution_id"]


def test_metrics_count_what_ran_and_show_slots_in_flight(
    api_url, admin_key, services, make_agent, processes
):
    make_agent("demo", max_parallel_tasks=1)
    port = free_port()
    processes.start("workers", "--processes", "2", "--threads", "2", "--metrics-port", str(port))
    ids = [_submit(api_url, admin_key, m) for m in ("one", "two words", "exit=3")]
    rows = [wait_for(lambda i=i: finished(services, i), 30) for i in ids]
    assert [r.status for r in rows] == ["completed", "completed", "failed"]
    long = _submit(api_url, admin_key, "long sleep=30")
    waiter = _submit(api_url, admin_key, "waiter")
    wait_for(lambda: services.slots.holds("demo", long), 30, message="the long run")

    workers = _samples(_scrape(f"http://127.0.0.1:{port}/metrics"))
    ok = dict(agent="demo", trigger="manual")
    assert _value(workers, "agx_executions_total", status="completed", **ok) == 2
    assert _value(workers, "agx_executions_total", status="failed", **ok) == 1
    cost = sum((r.cost or Decimal(0)) for r in rows)
    reported = _value(workers, "agx_execution_cost_usd_total", agent="demo", model="demo-model")
    assert reported == pytest.approx(float(cost))
    tokens = sum(r.input_tokens or 0 for r in rows)
    assert _value(workers, "agx_execution_tokens_total", agent="demo", kind="input") == tokens
    assert _value(workers, "agx_execution_duration_seconds_count", agent="demo") == 3
    # the long run started too: four dispatches measured, in both worker processes' files
    assert _value(workers, "agx_dispatch_latency_seconds_count", agent="demo") == 4

    api = _samples(_scrape(f"{api_url}/metrics"))
    assert _value(api, "agx_slots_in_use", agent="demo") == 1
    assert _value(api, "agx_slots_capacity", agent="demo") == 1
    assert _value(api, "agx_executions_waiting", agent="demo") == 1
    assert _value(api, "agx_oldest_waiting_seconds", agent="demo") >= 0
    route = dict(route="/api/agents/<name>/task", method="POST", status="202")
    assert _value(api, "agx_http_requests_total", **route) == 5
    assert not any("waiter" in str(k) or waiter in str(k) for k in api), "no ids in labels"


def test_the_exposition_passes_promtool(api_url, admin_key, make_agent, services):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed here (Debian package prometheus)")
    make_agent("demo")
    _submit(api_url, admin_key, "hello")
    text = _scrape(f"{api_url}/metrics")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0, problems


def test_a_metrics_token_closes_the_scrape_to_others(services, admin_key, make_agent):
    make_agent("demo")
    services.settings = replace(services.settings, metrics_token="s3cret-token")
    client = app_client(services, admin_key)  # an API key is not the metrics token
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and b"agx_slots_capacity" in ok.data
    with services.Session() as session:
        assert session.query(Execution).count() == 0


def test_a_forked_child_leaving_does_not_remove_its_trees_samples(monkeypatch, tmp_path):
    """gunicorn's workers are forks of the master: one that exits unwinds its copy of
    `agx api`'s stack, clean-up included; the live processes' samples must stay."""
    from shared.multiproc import MULTIPROC_ENV, forget_tree, prepare_multiproc

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = prepare_multiproc("api")
    (folder / "counter_1.db").write_bytes(b"")
    child = os.fork()
    if child == 0:  # the child: what an exiting gunicorn worker runs
        forget_tree(folder)
        os._exit(0)
    os.waitpid(child, 0)
    assert (folder / "counter_1.db").exists()
    forget_tree(folder)  # the tree's own process ends it
    assert not folder.exists()
