"""End to end: REST submit -> PostgreSQL row -> broker -> worker -> agent -> recorded outcome."""

from __future__ import annotations

from shared.models import Execution, Transcript
from tests.conftest import wait_for
from tests.helpers import finished


def test_a_submitted_task_runs_on_a_worker_and_records_its_outcome(
    client, services, make_agent, processes, broker_kind
):
    make_agent("demo")
    processes.workers()
    resp = client.post(
        "/api/agents/demo/task", json={"message": "hello world", "model": "claude-test-1"}
    )
    assert resp.status_code == 202, resp.json
    body = resp.json
    assert body["status"] == "pending" and body["links"]["self"].endswith(body["execution_id"])
    row = wait_for(lambda: finished(services, body["execution_id"]), 60, message="completion")
    assert row.status == "completed", (row.error, processes.logs())
    assert row.response == "demo: hello world"
    assert row.model_used == "claude-test-1"
    assert row.cost is not None and row.cost > 0
    assert row.claude_session_id and row.attempt == 1 and row.exit_code == 0
    assert row.started_at and row.completed_at and row.duration_ms is not None
    with services.Session() as session:
        transcript = session.get(Transcript, row.id)
    assert '"type":"result"' in transcript.content.replace(" ", "")
    record = client.get(f"/api/agents/demo/executions/{row.id}").json
    assert record["status"] == "completed" and record["transcript"] == transcript.content
    assert record["created_at"].endswith("Z")


def test_a_message_that_does_not_name_its_agent_still_runs(
    services, make_agent, processes, broker_kind
):
    """Messages from producers before messages carried the agent (a rolling deploy)."""
    from shared.broker import publish
    from shared.slots import submitted_us

    make_agent("demo")
    with services.Session.begin() as session:
        row = Execution(
            agent_name="demo", message="old style", status="pending", triggered_by="manual"
        )
        session.add(row)
    services.slots.enqueue("demo", row.id, submitted_us(row.created_at), 3)
    publish(services.broker, services.settings.queue, row.id)
    processes.workers()
    done = wait_for(lambda: finished(services, row.id), 60, message="completion")
    assert done.status == "completed" and done.response == "demo: old style"
