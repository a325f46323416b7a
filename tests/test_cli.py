"""The terminal client: task --follow, tail, stop, ls against a real API server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agx.cli import main
from agx.render import render_line
from producer import submit_execution
from tests.conftest import statuses, wait_for


@pytest.fixture
def cli(api_url, admin_key, settings):
    def run(*args: str):
        return CliRunner(
            env={"AGX_URL": api_url, "AGX_API_KEY": admin_key, "AGX_HOME": str(settings.home)}
        ).invoke(main, list(args))

    return run


def test_task_follow_prints_the_live_transcript_and_exits_with_the_outcome(
    cli, services, make_agent, processes
):
    make_agent("demo")
    processes.workers()
    done = cli("task", "demo", "hello there lines=3", "--follow")
    assert done.exit_code == 0, done.output
    assert "line 2" in done.output and "demo: hello there" in done.output
    assert "--- completed" in done.output
    failed = cli("task", "demo", "oops exit=4", "--follow")
    assert failed.exit_code == 1 and "code 4" in failed.output


def test_tail_replays_a_finished_execution_and_stop_cancels_a_pending_one(
    cli, services, make_agent
):
    make_agent("demo")
    eid = submit_execution(services, "demo", "never started").execution.id
    stopped = cli("stop", eid)
    assert stopped.exit_code == 0 and "cancelled" in stopped.output
    assert statuses(services, [eid])[eid] == "cancelled"
    tail = cli("tail", eid)
    assert tail.exit_code == 2 and "--- cancelled: stopped by request" in tail.output
    again = cli("stop", eid)
    assert again.exit_code != 0 and "409" in again.output
    assert cli("tail", "nope").exit_code != 0
    listed = cli("ls", "--agent", "demo")
    assert eid in listed.output and "cancelled" in listed.output


def test_tail_follows_a_running_execution_live(cli, services, make_agent, processes):
    make_agent("demo")
    processes.workers()
    eid = submit_execution(services, "demo", "slow lines=2 sleep=1").execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
    tail = cli("tail", eid)
    assert tail.exit_code == 0, tail.output
    assert tail.output.count("line 1") == 1 and "--- completed" in tail.output


def test_rendering_keeps_text_and_summarises_tool_use():
    assert render_line("plain text") == "plain text"
    assert (
        render_line(
            '{"type":"assistant","message":{"content":[{"type":"text","text":"hi"},'
            '{"type":"tool_use","name":"Bash"}]}}'
        )
        == "hi\n→ Bash"
    )
    assert (
        render_line('{"type":"result","num_turns":2,"total_cost_usd":0.5}')
        == "· result (2 turns, $0.5000)"
    )
    assert render_line("[1, 2]") == "[1, 2]"
