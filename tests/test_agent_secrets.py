"""An agent's env: masked for scoped keys, and its values kept out of everything stored."""

from __future__ import annotations

import sys

from shared import events
from shared.models import Execution, Transcript
from shared.store.keys import create_key
from tests.conftest import app_client, statuses, wait_for

SECRET = 'hunter2-"quoted"-\u00e9t\u00e9'  # no credential-looking name: only its value tells
# Prints the secret raw, inside a JSON string (escaped), in the result, and on stderr.
LEAKY = (
    "import json, os, sys\n"
    "s = os.environ['PLAIN_SETTING']\n"
    "print('raw', s)\n"
    "text = {'type': 'text', 'text': s}\n"
    "print(json.dumps({'type': 'assistant', 'message': {'content': [text]}}))\n"
    "print(json.dumps({'type': 'result', 'result': 'got ' + s, 'is_error': False}))\n"
    "print('stderr', s, file=sys.stderr)\n"
    "sys.exit(int(sys.argv[1]))\n"
)


def test_a_scoped_key_sees_env_names_but_not_their_values(client, services, make_agent):
    make_agent("alpha", env={"MY_API_TOKEN": "tok-123456789", "REGION": "eu"})
    with services.Session.begin() as session:
        key = create_key(session, "scoped", ["alpha"])
    scoped = app_client(services, key)
    for agent in (scoped.get("/api/agents/alpha").json, scoped.get("/api/agents").json["items"][0]):
        assert agent["env"] == {"MY_API_TOKEN": "********", "REGION": "********"}
    assert client.get("/api/agents/alpha").json["env"]["MY_API_TOKEN"] == "tok-123456789"


def test_env_values_never_reach_the_transcript_response_error_or_stream(
    client, services, make_agent, processes
):
    for name, code in (("leaky", "0"), ("leaky-fails", "1")):
        make_agent(
            name,
            command=[sys.executable, "-c", LEAKY, code],
            env={"PLAIN_SETTING": SECRET, "SHORT": "eu"},
        )
    processes.workers()
    ids = [
        client.post(f"/api/agents/{name}/task", json={"message": "leak"}).json["execution_id"]
        for name in ("leaky", "leaky-fails")
    ]
    wait_for(lambda: set(statuses(services, ids).values()) <= {"completed", "failed"}, 60)
    with services.Session() as session:
        rows = [session.get(Execution, i) for i in ids]
        transcripts = [session.get(Transcript, i).content for i in ids]
    assert [r.status for r in rows] == ["completed", "failed"]
    assert rows[0].response == "got [REDACTED]"
    assert "stderr [REDACTED]" in rows[1].error
    stored = [r.response or "" for r in rows] + [r.error or "" for r in rows] + transcripts
    streamed = [line for i in ids for line in events.stream_lines(services.redis, i)]
    escaped = 'hunter2-\\"quoted\\"'
    for text in stored + streamed:
        assert "hunter2" not in text and escaped not in text, text
    assert "raw [REDACTED]" in transcripts[0]


def test_an_agent_whose_env_cannot_be_passed_fails_at_once_with_the_reason(
    client, services, make_agent, processes
):
    make_agent("broken", env={"BAD": "\ud800"})  # stored before the API refused such values
    processes.workers()
    eid = client.post("/api/agents/broken/task", json={"message": "go"}).json["execution_id"]
    wait_for(lambda: statuses(services, [eid])[eid] == "failed", 10, message="a quick failure")
    with services.Session() as session:
        row = session.get(Execution, eid)
    assert "lone surrogate" in row.error and row.attempt == 1
    ok = client.post("/api/agents/broken/task", json={"message": "again"}).json["execution_id"]
    wait_for(lambda: statuses(services, [ok])[ok] == "failed", 10, message="the slot was freed")


def test_a_missing_program_fails_naming_the_setting_without_server_paths(
    client, services, make_agent, processes
):
    make_agent("ghost", command=["/srv/secret/place/agent-bin"])
    processes.workers()
    eid = client.post("/api/agents/ghost/task", json={"message": "go"}).json["execution_id"]
    wait_for(lambda: statuses(services, [eid])[eid] == "failed", 10, message="failure")
    with services.Session() as session:
        error = session.get(Execution, eid).error
    assert error == "could not start agent: command[0]: No such file or directory"
