"""REST: submitting tasks, queue limits, listing with filters and cursors, OpenAPI and probes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from producer import submit_execution
from producer.submit import Publication
from shared.models import Execution
from shared.services import Services
from tests.conftest import statuses, wait_for


def _count(services):
    with services.Session() as session:
        return session.query(Execution).count()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "message"),
        ({"message": ""}, "message"),
        ({"message": "   "}, "message"),
        ({"message": 42}, "message"),
        ({"message": "a\x00b"}, "message"),
        ({"message": "x" * (100 * 1024 + 1)}, "message"),
        ({"message": "hi", "model": "--dangerously-skip-permissions"}, "model"),
        ({"message": "hi", "model": "a b; rm -rf /"}, "model"),
        ({"message": "hi", "timeout_seconds": 0}, "timeout_seconds"),
        ({"message": "hi", "timeout_seconds": 901}, "timeout_seconds"),
        ({"message": "hi", "wait": "perhaps"}, "wait"),
        ({"message": "hi", "extra": True}, "extra"),
    ],
)
def test_a_bad_task_is_refused_naming_the_field_and_creates_no_row(
    client, services, make_agent, body, field
):
    make_agent("demo")
    resp = client.post("/api/agents/demo/task", json=body)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["field"] == field
    assert _count(services) == 0


def test_a_task_for_an_unknown_agent_is_404(client, services):
    resp = client.post("/api/agents/ghost/task", json={"message": "hi"})
    assert resp.status_code == 404 and "ghost" in resp.json["error"]["message"]
    assert _count(services) == 0


def test_the_queue_limit_refuses_with_429_and_stores_nothing_for_the_refused_request(
    client, services, make_agent
):
    make_agent("tight", max_parallel_tasks=1, queue_limit=2)
    accepted = [client.post("/api/agents/tight/task", json={"message": f"m{i}"}) for i in range(3)]
    assert [r.status_code for r in accepted] == [202, 202, 202]
    assert [r.json["queue_position"] for r in accepted] == [None, 1, 2]
    refused = client.post("/api/agents/tight/task", json={"message": "one too many"})
    assert refused.status_code == 429
    message = refused.json["error"]["message"]
    assert "has 3 executions in flight" in message and "queue_limit = 3" in message
    assert _count(services) == 3


def test_wait_true_returns_the_finished_execution(client, services, make_agent, processes):
    make_agent("demo")
    processes.workers()
    resp = client.post("/api/agents/demo/task", json={"message": "patience", "wait": True})
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "completed" and resp.json["response"] == "demo: patience"


def test_a_failed_agent_run_is_recorded_as_failed_with_the_reason(
    client, services, make_agent, processes
):
    make_agent("demo")
    processes.workers()
    bad_exit = client.post("/api/agents/demo/task", json={"message": "x exit=3"}).json
    no_result = client.post("/api/agents/demo/task", json={"message": "x no-result"}).json
    ids = [bad_exit["execution_id"], no_result["execution_id"]]
    wait_for(lambda: set(statuses(services, ids).values()) == {"failed"}, 60, message="failed")
    with services.Session() as session:
        rows = {e.id: e for e in session.query(Execution).filter(Execution.id.in_(ids))}
    assert "code 3" in rows[ids[0]].error and rows[ids[0]].exit_code == 3
    assert "without a result" in rows[ids[1]].error


def test_a_publish_that_fails_is_re_sent_and_the_execution_completes_once(
    services, make_agent, processes, broker_kind, settings
):
    """The broker is unreachable between commit and publish; the reaper sweep re-sends."""
    make_agent("demo")
    dead = (
        "amqp://guest:guest@127.0.0.1:1/%2F"
        if broker_kind == "rabbitmq"
        else "redis://127.0.0.1:1/0"
    )
    broken = Services(replace(settings, broker_url=dead), pool_size=2)
    try:
        submitted = submit_execution(broken, "demo", "survive the broker")
    finally:
        broken.close()
    assert submitted.publication is Publication.failed
    assert statuses(services, [submitted.execution.id])[submitted.execution.id] == "pending"
    processes.workers()
    processes.start("reaper", "--interval", "0.5")
    eid = submitted.execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "completed", 60, message="completed")
    with services.Session() as session:
        assert session.get(Execution, eid).attempt == 1


def test_listing_filters_and_pages_newest_first(client, services, make_agent):
    make_agent("a1", queue_limit=1000)
    make_agent("a2", queue_limit=1000)
    ids = [
        submit_execution(services, "a1" if i % 2 else "a2", f"task number {i}").execution.id
        for i in range(7)
    ]
    everything = client.get("/api/executions?limit=3")
    assert everything.status_code == 200
    seen, cursor = [], None
    while True:
        page = client.get(
            "/api/executions", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}
        ).json
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    a1 = client.get("/api/agents/a1/executions").json["items"]
    assert {e["agent_name"] for e in a1} == {"a1"} and len(a1) == 3
    assert len(client.get("/api/executions?status=pending&trigger=manual").json["items"]) == 7
    assert client.get("/api/executions?status=completed").json["items"] == []
    assert [e["id"] for e in client.get("/api/executions?q=number 4").json["items"]] == [ids[4]]
    assert client.get("/api/executions?since=2999-01-01T00:00:00Z").json["items"] == []
    assert len(client.get("/api/executions?until=2999-01-01T00:00:00Z").json["items"]) == 7


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("trigger=cron", "trigger"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("since=yesterday", "since"),
        ("cursor=!!!", "cursor"),
        ("colour=red", "colour"),
    ],
)
def test_bad_list_filters_are_422_naming_the_parameter(client, query, field):
    resp = client.get(f"/api/executions?{query}")
    assert resp.status_code == 422 and resp.json["error"]["field"] == field


def test_an_unknown_execution_is_404(client, make_agent):
    make_agent("demo")
    assert client.get("/api/agents/demo/executions/nope").status_code == 404


def test_openapi_describes_every_api_route_with_its_request_schema(client):
    spec = client.get("/openapi.json").json
    task = spec["paths"]["/api/agents/{name}/task"]["post"]
    schema = spec["components"]["schemas"][
        task["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    ]
    assert "message" in schema["properties"] and "message" in schema["required"]
    assert "/api/executions" in spec["paths"] and "/api/agents/{name}" in spec["paths"]
    params = {p["name"] for p in spec["paths"]["/api/executions"]["get"]["parameters"]}
    assert {"agent", "status", "trigger", "since", "until", "q", "limit", "cursor"} <= params


def test_health_and_readiness_probes(client, services, settings):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    from api.app import create_app

    broken = Services(replace(settings, broker_url="amqp://guest:guest@127.0.0.1:1/%2F"))
    try:
        resp = create_app(services=broken).test_client().get("/readyz")
        assert resp.status_code == 503 and resp.json["checks"]["broker"] != "ok"
    finally:
        broken.close()


def test_the_queue_limit_is_exact_under_concurrent_submissions(services, make_agent):
    import threading

    from shared.errors import QueueFull

    make_agent("tight", max_parallel_tasks=1, queue_limit=5)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        try:
            submit_execution(services, "tight", f"burst {i}")
            result = "accepted"
        except QueueFull:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("accepted") == 6 and outcomes.count("refused") == 14
    assert _count(services) == 6


@pytest.mark.parametrize("margin", [0, 10_000], ids=["one statement", "locked path"])
def test_a_submission_takes_the_agents_default_model_and_is_stamped_queued_once_slots_are_full(
    services, make_agent, monkeypatch, margin
):
    """Both ways a submission is stored (far from the limit, and near it under the agent's
    lock) fill in the agent's default model and stamp queued_at when no slot is free."""
    import producer.submit

    monkeypatch.setattr(producer.submit, "LOCK_MARGIN", margin)
    make_agent("demo", max_parallel_tasks=1, queue_limit=5, default_model="claude-default-1")
    first = submit_execution(services, "demo", "one").execution
    second = submit_execution(services, "demo", "two", model="claude-given-2").execution
    with services.Session() as session:
        stored = {e.id: e for e in session.query(Execution)}
    assert (stored[first.id].model, first.model) == ("claude-default-1", "claude-default-1")
    assert (stored[second.id].model, second.model) == ("claude-given-2", "claude-given-2")
    assert stored[first.id].queued_at is None and first.queued_at is None
    assert stored[second.id].queued_at == stored[second.id].created_at == second.queued_at


def test_far_from_the_limit_a_submission_counts_in_flight_executions_in_redis(
    settings, services, make_agent, redis_client
):
    """The lock-free path judges 'far from the queue limit' by Redis's leases and waiters (no
    scan of the rows); while Redis lost its state, or cannot be reached, the rows are counted.
    The count shows in queued_at: a submission is stamped waiting when every slot is taken."""
    from shared import keys
    from shared.slots import Waiter

    make_agent("demo", max_parallel_tasks=2, queue_limit=1000)
    phantoms = [Waiter("demo", f"phantom-{i}", i + 1) for i in range(3)]
    services.slots.enqueue_many("demo", phantoms, 2)
    assert services.slots.in_flight("demo") == 3
    waits = submit_execution(services, "demo", "one").execution
    assert waits.queued_at is not None, "3 in flight as Redis counts them: it waits"
    redis_client.delete(keys.epoch())  # Redis lost its state: its count is not trusted
    assert services.slots.in_flight("demo") is None
    counted = submit_execution(services, "demo", "two").execution
    assert counted.queued_at is None, "1 row in flight: a slot is free"
    away = Services(replace(settings, redis_url="redis://127.0.0.1:1/0"), pool_size=1)
    try:
        third = submit_execution(away, "demo", "three").execution
    finally:
        away.close()
    assert third.queued_at is not None, "2 rows in flight, counted: every slot is taken"
    assert statuses(services, [waits.id, counted.id, third.id]) == dict.fromkeys(
        [waits.id, counted.id, third.id], "pending"
    )


def test_redis_counting_more_than_the_rows_never_refuses_a_submission(services, make_agent):
    """Redis may count more than the rows (a lapsed lease not yet purged, a stale waiter): the
    queue limit is only ever refused by the rows, counted under the agent's lock."""
    from shared.errors import QueueFull
    from shared.slots import Waiter

    make_agent("demo", max_parallel_tasks=1, queue_limit=2)
    phantoms = [Waiter("demo", f"phantom-{i}", i + 1) for i in range(5)]
    services.slots.enqueue_many("demo", phantoms, 1)
    accepted = [submit_execution(services, "demo", f"task {i}").execution.id for i in range(3)]
    assert len(set(statuses(services, accepted).values())) == 1
    with pytest.raises(QueueFull):
        submit_execution(services, "demo", "one too many")


def test_an_agent_whose_whole_limit_is_small_is_always_judged_by_its_rows(
    services, make_agent, monkeypatch
):
    """The default limit (3 + 100) is within LOCK_MARGIN: submissions go to the locked path
    (rows counted), and once the limit is raised past it they take the lock-free one again."""
    import producer.submit
    from shared.slots import Waiter

    monkeypatch.setattr(producer.submit, "SMALL_LIMIT_SECONDS", 0.0)
    agent = make_agent("demo", max_parallel_tasks=2, queue_limit=100)
    services.slots.enqueue_many("demo", [Waiter("demo", f"p-{i}", i + 1) for i in range(3)], 2)
    by_rows = submit_execution(services, "demo", "one").execution
    assert by_rows.queued_at is None, "0 rows in flight: a slot is free (Redis says 3)"
    with services.Session.begin() as session:
        session.get(type(agent), "demo").queue_limit = 1000
    by_redis = submit_execution(services, "demo", "two").execution
    assert by_redis.queued_at is not None, "3 waiters as Redis counts them: it waits"
