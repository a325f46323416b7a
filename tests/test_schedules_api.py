"""REST schedules: CRUD, next_run_at weekdays, validation naming the field, Make Repeatable."""

from __future__ import annotations

import pytest

from producer import submit_execution
from scheduler import zone
from shared.models import Schedule
from shared.timefmt import parse_iso
from tests.helpers import WEEKDAYS, ZONES

GOOD = {"cron": "0 9 * * mon-fri", "timezone": "Europe/Berlin", "message": "daily report"}


def _count(services) -> int:
    with services.Session() as session:
        return session.query(Schedule).count()


def test_a_schedule_is_created_listed_read_changed_and_deleted(client, services, make_agent):
    make_agent("demo")
    created = client.post("/api/agents/demo/schedules", json={**GOOD, "model": "m-1"})
    assert created.status_code == 201, created.json
    body = created.json
    assert body["name"] == "daily report" and body["overlap"] == "skip" and body["enabled"]
    assert body["misfire_grace_seconds"] == 300 and body["model"] == "m-1"
    assert body["next_run_at"].endswith("Z") and body["last_run_at"] is None
    schedule_id = body["id"]
    assert [s["id"] for s in client.get("/api/agents/demo/schedules").json["items"]] == [
        schedule_id
    ]
    assert [s["id"] for s in client.get("/api/schedules").json["items"]] == [schedule_id]
    one = client.get(f"/api/schedules/{schedule_id}").json
    assert one["history"] == [] and one["next_run_at"] == body["next_run_at"]
    changed = client.patch(
        f"/api/schedules/{schedule_id}", json={"cron": "@hourly", "overlap": "queue", "model": None}
    )
    assert changed.status_code == 200, changed.json
    assert changed.json["cron"] == "@hourly" and changed.json["model"] is None
    assert parse_iso(changed.json["next_run_at"]).minute == 0
    assert client.delete(f"/api/schedules/{schedule_id}").status_code == 204
    assert client.get(f"/api/schedules/{schedule_id}").status_code == 404


def test_pausing_clears_next_run_at_and_resuming_restores_it(client, make_agent):
    make_agent("demo")
    schedule_id = client.post("/api/agents/demo/schedules", json=GOOD).json["id"]
    paused = client.patch(f"/api/schedules/{schedule_id}", json={"enabled": False}).json
    assert paused["enabled"] is False and paused["next_run_at"] is None
    resumed = client.patch(f"/api/schedules/{schedule_id}", json={"enabled": True}).json
    assert resumed["enabled"] is True and resumed["next_run_at"] is not None


@pytest.mark.parametrize("tz", ZONES)
def test_next_run_at_falls_on_the_weekday_asked_for_by_number_or_name(client, make_agent, tz):
    make_agent("demo")
    for dow, weekday in WEEKDAYS.items():
        resp = client.post(
            "/api/agents/demo/schedules",
            json={"cron": f"45 23 * * {dow}", "timezone": tz, "message": "x"},
        )
        assert resp.status_code == 201, resp.json
        local = parse_iso(resp.json["next_run_at"]).astimezone(zone(tz))
        assert (local.weekday(), local.hour, local.minute) == (weekday, 23, 45), dow


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "cron": "0 9 * * 8"}, "cron"),
        ({**GOOD, "cron": "61 * * * *"}, "cron"),
        ({**GOOD, "cron": "0 9 * *"}, "cron"),
        ({**GOOD, "cron": "@reboot"}, "cron"),
        ({**GOOD, "cron": "0 0 31 2 *"}, "cron"),
        ({**GOOD, "cron": ""}, "cron"),
        ({**GOOD, "timezone": "Mars/Olympus"}, "timezone"),
        ({**GOOD, "timezone": "+02:00"}, "timezone"),
        ({**GOOD, "overlap": "sometimes"}, "overlap"),
        ({**GOOD, "misfire_grace_seconds": -1}, "misfire_grace_seconds"),
        ({**GOOD, "message": ""}, "message"),
        ({**GOOD, "model": "--dangerously-skip-permissions"}, "model"),
        ({**GOOD, "colour": "blue"}, "colour"),
        ({"cron": "@daily"}, "message"),
        ({"message": "no cron"}, "cron"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field_and_nothing_is_stored(
    client, services, make_agent, body, field
):
    make_agent("demo")
    resp = client.post("/api/agents/demo/schedules", json=body)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["field"] == field and resp.json["error"]["code"] == "invalid_field"
    assert _count(services) == 0


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"cron": "* * * * 9"}, "cron"),
        ({"timezone": "Nowhere"}, "timezone"),
        ({"overlap": "never"}, "overlap"),
        ({"enabled": None}, "enabled"),
        ({"message": ""}, "message"),
    ],
)
def test_a_bad_change_is_refused_naming_the_field_and_changes_nothing(
    client, make_agent, patch, field
):
    make_agent("demo")
    before = client.post("/api/agents/demo/schedules", json=GOOD).json
    resp = client.patch(f"/api/schedules/{before['id']}", json=patch)
    assert resp.status_code == 422 and resp.json["error"]["field"] == field
    after = client.get(f"/api/schedules/{before['id']}").json
    assert {k: after[k] for k in GOOD} == {k: before[k] for k in GOOD}


def test_a_schedule_for_an_unknown_agent_is_404(client, services):
    assert client.post("/api/agents/ghost/schedules", json=GOOD).status_code == 404
    assert client.get("/api/agents/ghost/schedules").status_code == 404
    assert _count(services) == 0


def test_make_repeatable_copies_the_message_and_model_of_an_execution(client, services, make_agent):
    make_agent("demo")
    source = submit_execution(services, "demo", "summarise the news", model="claude-x").execution
    resp = client.post(
        "/api/agents/demo/schedules",
        json={
            "from_execution_id": source.id,
            "cron": "0 8 * * *",
            "timezone": "America/New_York",
            "name": "morning news",
        },
    )
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert (body["message"], body["model"]) == ("summarise the news", "claude-x")
    assert body["created_from_execution_id"] == source.id and body["name"] == "morning news"
    assert client.get(f"/api/schedules/{body['id']}").json["created_from_execution_id"] == source.id


@pytest.mark.parametrize("which", ["unknown", "foreign"])
def test_make_repeatable_refuses_an_unknown_or_another_agents_execution(
    client, services, make_agent, which
):
    make_agent("demo")
    make_agent("other")
    foreign = submit_execution(services, "other", "not yours").execution.id
    execution_id = foreign if which == "foreign" else "nope"
    resp = client.post(
        "/api/agents/demo/schedules", json={"from_execution_id": execution_id, "cron": "@daily"}
    )
    assert resp.status_code == 422 and resp.json["error"]["field"] == "from_execution_id"
    assert _count(services) == 0


def test_an_agent_key_sees_only_its_agents_schedules(client, services, make_agent):
    from shared.store.keys import create_key

    make_agent("demo")
    make_agent("other")
    mine = client.post("/api/agents/demo/schedules", json=GOOD).json["id"]
    theirs = client.post("/api/agents/other/schedules", json=GOOD).json["id"]
    with services.Session.begin() as session:
        key = create_key(session, "scoped", ["demo"])
    auth = {"Authorization": f"Bearer {key}"}
    assert [s["id"] for s in client.get("/api/schedules", headers=auth).json["items"]] == [mine]
    assert client.get(f"/api/schedules/{theirs}", headers=auth).status_code == 404
    assert client.delete(f"/api/schedules/{theirs}", headers=auth).status_code == 404
    assert client.post("/api/agents/other/schedules", json=GOOD, headers=auth).status_code == 404


def test_openapi_documents_the_schedule_bodies(client):
    spec = client.get("/openapi.json").json
    post = spec["paths"]["/api/agents/{name}/schedules"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ScheduleCreate"
    )
    fields = spec["components"]["schemas"]["ScheduleCreate"]["properties"]
    assert {"cron", "timezone", "overlap", "misfire_grace_seconds", "from_execution_id"} <= set(
        fields
    )
    assert "patch" in spec["paths"]["/api/schedules/{schedule_id}"]


def test_the_cli_adds_lists_pauses_resumes_and_removes_schedules(
    api_url, admin_key, settings, make_agent
):
    import subprocess
    import sys

    from tests.conftest import worker_env

    make_agent("demo")
    env = {**worker_env(settings), "AGX_URL": api_url, "AGX_API_KEY": admin_key}

    def agx(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "agx", "schedules", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    added = agx("add", "demo", "0 9 * * mon", "weekly report", "--tz", "Europe/Berlin")
    schedule_id = added.split()[0]
    assert "Europe/Berlin" in added and " on " in added
    assert schedule_id in agx("ls") and schedule_id in agx("ls", "--agent", "demo")
    assert " off " in agx("pause", schedule_id)
    assert " on " in agx("resume", schedule_id)
    assert '"history": []' in agx("show", schedule_id)
    agx("rm", schedule_id)
    assert schedule_id not in agx("ls")
    bad = subprocess.run(
        [sys.executable, "-m", "agx", "schedules", "add", "demo", "0 9 * * 8", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "cron" in bad.stderr


def test_the_whole_history_pages_newest_first_with_a_cursor(client, services, make_agent):
    from datetime import UTC, datetime, timedelta

    from shared.models import ScheduleFire

    make_agent("demo")
    schedule_id = client.post(
        "/api/agents/demo/schedules", json={"cron": "@hourly", "message": "m"}
    ).json["id"]
    start = datetime(2026, 3, 2, tzinfo=UTC)
    outcomes = ["submitted", "skipped", "missed", "submitted", "waiting", "submitted", "failed"]
    with services.Session.begin() as session:
        for hour, outcome in enumerate(outcomes):
            session.add(
                ScheduleFire(
                    schedule_id=schedule_id,
                    scheduled_for=start + timedelta(hours=hour),
                    outcome=outcome,
                    reason=f"r{hour}",
                )
            )
    url = f"/api/schedules/{schedule_id}/fires"
    seen, cursor, pages = [], None, 0
    while True:
        resp = client.get(url, query_string={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.json
        seen += resp.json["items"]
        pages += 1
        cursor = resp.json["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [f["reason"] for f in seen] == [f"r{h}" for h in reversed(range(7))]
    only = client.get(url, query_string={"outcome": "submitted"}).json["items"]
    assert [f["reason"] for f in only] == ["r5", "r3", "r0"]
    assert client.get(f"/api/schedules/{schedule_id}").json["links"]["fires"] == url
    for bad, field in (
        ({"cursor": "yesterday"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"outcome": "maybe"}, "outcome"),
    ):
        resp = client.get(url, query_string=bad)
        assert resp.status_code == 422 and resp.json["error"]["field"] == field
    assert client.get("/api/schedules/nope/fires").status_code == 404
