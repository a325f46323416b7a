"""The web pages in a real headless Chromium against a real API server and real workers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.models import Execution, Schedule
from shared.services import Services
from tests.browser import NARROW, CuttableProxy, Site, api_key, browser_fixture, shoot
from tests.conftest import Processes, wait_for

expect: Any = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.timeout(180)
__all__ = ["browser_fixture"]  # the module's one browser (tests/browser.py)


@pytest.fixture
def site(browser: Any, api_url: str, services: Services, admin_key: str) -> Iterator[Site]:
    found = Site(browser, api_url, admin_key)
    yield found
    found.close()


@pytest.fixture
def demo(make_agent: Callable[..., Any], processes: Processes) -> str:
    """The demo agent, with a worker pool running."""
    make_agent("demo", max_parallel_tasks=3, description="The demo agent: obeys sleep=, lines=")
    processes.workers(1, 4)
    return "demo"


def submit(site: Site, message: str, agent: str = "demo") -> str:
    """Send a task through the API (as a client would); its execution id."""
    ctx = site.context(key="")
    resp = ctx.request.post(
        f"/api/agents/{agent}/task",
        data={"message": message},
        headers={"Authorization": f"Bearer {site.key}"},
    )
    assert resp.status == 202, resp.text()
    return str(resp.json()["execution_id"])


def status_of(services: Services, execution_id: str) -> str:
    with services.Session() as session:
        row = session.get(Execution, execution_id)
        return row.status if row else ""


def finished(services: Services, execution_id: str) -> Execution:
    wait_for(
        lambda: status_of(services, execution_id) in ("completed", "failed", "cancelled"),
        60,
        0.1,
        "the execution to end",
    )
    with services.Session() as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        session.expunge(row)
        return row


def badge(page: Any) -> Any:
    return page.locator("#execution [data-badge] .label")


def test_sign_in_is_required_and_works(site: Site) -> None:
    page = site.context(key="").new_page()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/executions$"))
    expect(page.get_by_role("heading", name="Sign in to agx")).to_be_visible()
    shoot(page, "sign-in")
    page.get_by_label("API key").fill("agx_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_have_text("That API key is not valid.")
    page.get_by_label("API key").fill(site.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/executions$"))
    expect(page.get_by_role("heading", name="No agent yet")).to_be_visible()
    assert site.key not in page.url
    shoot(page, "empty-executions")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/sign-in"))
    page.goto("/agents")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/agents$"))


def test_a_task_sent_from_the_tasks_tab_streams_live_to_completed(
    site: Site, demo: str, services: Services
) -> None:
    page = site.page("/agents/demo")
    expect(page).to_have_url(re.compile("/agents/demo/tasks$"))
    page.get_by_label("Message").fill("Summarise the news\nsleep=3 lines=12")
    page.get_by_role("button", name="Send").click()
    live = page.locator("#history-table tbody tr").first.get_by_role("link", name="Live")
    expect(live).to_be_visible(timeout=15_000)
    shoot(page, "tasks-running")
    live.click()
    expect(page).to_have_url(re.compile(r"/executions/[\w-]+$"))
    expect(page.locator("[data-live-indicator]")).to_be_visible()
    expect(page.locator("#transcript .t-text", has_text="line 11")).to_be_visible()
    expect(badge(page)).to_have_text("running")
    shoot(page, "execution-live")
    expect(badge(page)).to_have_text("completed", timeout=30_000)
    expect(page.locator("[data-live-indicator]")).to_be_hidden()
    expect(page.locator("[data-outcome-text]")).to_contain_text("demo: Summarise the news")
    expect(page.locator('[data-field="cost"]')).to_have_text(re.compile(r"^\$0\.\d{4}$"))
    assert page.locator("#transcript .t-text", has_text=re.compile(r"^line \d+$")).count() == 12
    shoot(page, "execution-completed")
    narrow = site.page(page.url, width=NARROW)
    expect(narrow.locator("#execution [data-badge] .label")).to_have_text("completed")
    expect(narrow.locator("#transcript .t-text").first).to_be_visible()
    shoot(narrow, "execution-completed")
    tasks = site.page("/agents/demo/tasks", width=NARROW)
    expect(tasks.locator("#history-table tbody tr")).to_have_count(1)
    shoot(tasks, "tasks")


def _row(
    session: Any, agent: str, status: str, trigger: str, created: datetime, message: str
) -> str:
    row = Execution(
        id=uuid.uuid4().hex[:20],
        agent_name=agent,
        status=status,
        triggered_by=trigger,
        message=message,
        created_at=created,
        duration_ms=1234 if status == "completed" else None,
    )
    session.add(row)
    return row.id


def test_the_list_filters_by_status_trigger_and_date_in_the_url(
    site: Site, services: Services, make_agent: Callable[..., Any]
) -> None:
    make_agent("demo")
    now = datetime.now(UTC)
    with services.Session.begin() as session:
        old = _row(session, "demo", "completed", "schedule", now - timedelta(days=3), "old report")
        new = _row(session, "demo", "completed", "schedule", now - timedelta(hours=1), "new report")
        _row(session, "demo", "failed", "schedule", now - timedelta(hours=2), "failed report")
        _row(session, "demo", "completed", "manual", now - timedelta(hours=3), "by hand")
    page = site.page("/executions?status=completed&trigger=schedule")
    rows = page.locator("#executions tbody tr")
    expect(rows).to_have_count(2)
    expect(page.get_by_label("Status")).to_have_value("completed")
    expect(page.get_by_label("Trigger")).to_have_value("schedule")
    shoot(page, "executions-filtered")
    since = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    page.goto(f"/executions?status=completed&trigger=schedule&since={since}")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-execution", new)
    until = (now - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    page.goto(f"/executions?trigger=schedule&until={until}")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-execution", old)
    # The form writes the same URL: pick a status and a day, then filter.
    page.goto("/executions")
    expect(rows).to_have_count(4)
    page.get_by_label("Status").select_option("failed")
    page.get_by_label("From").fill((now - timedelta(days=1)).strftime("%Y-%m-%d"))
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=failed&since=\d{4}-"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("failed report")
    page.goto("/executions?q=nothing-like-this")
    expect(page.get_by_role("heading", name="No execution matches this filter")).to_be_visible()
    page.goto("/executions?since=yesterday")
    expect(page.get_by_role("alert")).to_contain_text("since")
    shoot(page, "executions-bad-filter")


def test_a_running_row_turns_completed_without_a_reload(
    site: Site, demo: str, services: Services
) -> None:
    done = submit(site, "quick one")
    finished(services, done)
    running = submit(site, "a longer one sleep=4")
    page = site.page("/executions")
    row = page.locator(f'tr[data-execution="{running}"]')
    expect(row.locator("[data-badge] .label")).to_have_text(re.compile("pending|running"))
    expect(page.locator("[data-live-state]")).to_have_text("Following 1 live execution.")
    page.evaluate("window.__notReloaded = true")
    shoot(page, "executions-live")
    expect(row.locator("[data-badge] .label")).to_have_text("completed", timeout=30_000)
    expect(row.locator('[data-field="duration"]')).to_have_text(re.compile(r"^\d+\.\d s$"))
    assert page.evaluate("window.__notReloaded") is True
    shoot(page, "executions")
    shoot(site.page("/executions", width=NARROW), "executions")


def test_stop_from_the_detail_page_ends_cancelled(
    site: Site, demo: str, services: Services
) -> None:
    execution_id = submit(site, "a long job sleep=60")
    page = site.page(f"/executions/{execution_id}")
    expect(badge(page)).to_have_text("running", timeout=15_000)
    page.get_by_role("button", name="Stop").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    shoot(page, "stop-dialog", full=False)
    dialog.get_by_role("button", name="Stop execution").click()
    expect(badge(page)).to_have_text("cancelled", timeout=20_000)
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.locator("[data-outcome-text]")).to_contain_text("stopped")
    assert status_of(services, execution_id) == "cancelled"
    shoot(page, "execution-cancelled")


def test_continue_as_chat_gets_a_reply_in_the_same_session(
    site: Site, demo: str, services: Services
) -> None:
    first = finished(services, submit(site, "Remember the word mango"))
    page = site.page(f"/executions/{first.id}")
    page.get_by_role("link", name="Continue as Chat").click()
    expect(page).to_have_url(re.compile(rf"/agents/demo/chat\?continue={first.id}$"))
    expect(page.locator(".bubble.user").first).to_have_text(re.compile("Remember the word mango"))
    page.get_by_label("Message").fill("Which word?")
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".bubble.agent").nth(1)
    expect(reply).to_contain_text("Remember the word mango", timeout=30_000)
    expect(page).to_have_url(re.compile(rf"session={first.claude_session_id}$"))
    with services.Session() as session:
        turns = session.query(Execution).filter(Execution.parent_execution_id == first.id).all()
    # the reply streams in before the turn's row is written: its session comes with the write
    assert [finished(services, t.id).claude_session_id for t in turns] == [first.claude_session_id]
    page.get_by_label("Message").fill("And now?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".bubble.agent")).to_have_count(3)
    expect(page.locator(".bubble.agent").nth(2)).to_contain_text("Which word?", timeout=30_000)
    shoot(page, "chat")
    page.reload()
    expect(page.locator(".bubble.agent")).to_have_count(3)
    shoot(site.page(page.url, width=NARROW), "chat")
    page.get_by_role("link", name="New session").click()
    expect(page.locator(".chat-empty")).to_be_visible()


def test_make_repeatable_shows_next_runs_and_creates_the_schedule(
    site: Site, demo: str, services: Services
) -> None:
    done = finished(services, submit(site, "Daily digest please"))
    page = site.page(f"/executions/{done.id}")
    page.get_by_role("link", name="Make Repeatable").click()
    expect(page.get_by_label("Message")).to_have_value("Daily digest please")
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_label("Cron").fill("30 7 * * *")
    runs = page.locator("#preview li time")
    expect(runs).to_have_count(5)
    expect(runs.first).to_contain_text("07:30")
    expect(page.locator("[data-preview-zone]")).to_have_text("in Europe/Berlin")
    from scheduler import FireTimes

    expected, at = [], datetime.now(UTC)
    for _ in range(5):
        at = FireTimes.of("30 7 * * *", "Europe/Berlin").next_after(at)  # type: ignore[assignment]
        expected.append(at.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    assert [runs.nth(i).get_attribute("datetime") for i in range(5)] == expected
    page.get_by_label("Cron").fill("61 * * * *")
    expect(page.locator("#preview-error")).to_contain_text("cron")
    page.get_by_label("Cron").fill("30 7 * * *")
    expect(runs).to_have_count(5)
    shoot(page, "make-repeatable")
    page.get_by_role("button", name="Save schedule").click()
    expect(page).to_have_url(re.compile(r"/agents/demo/schedules#s-"))
    card = page.locator("[data-schedule]")
    expect(card).to_contain_text("30 7 * * *")
    expect(card).to_contain_text("Europe/Berlin")
    with services.Session() as session:
        schedule = session.query(Schedule).one()
        assert schedule.created_from_execution_id == done.id
        assert (schedule.cron, schedule.timezone) == ("30 7 * * *", "Europe/Berlin")
    shoot(page, "schedules")
    page.get_by_role("switch").click()
    expect(page.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    expect(card.locator("[data-next-run]")).to_have_text("paused")
    with services.Session() as session:
        assert session.query(Schedule).one().enabled is False
    shoot(site.page("/agents/demo/schedules", width=NARROW), "schedules")


def test_a_scoped_key_cannot_open_another_agents_execution(
    site: Site, services: Services, make_agent: Callable[..., Any]
) -> None:
    make_agent("mine")
    make_agent("theirs")
    now = datetime.now(UTC)
    with services.Session.begin() as session:
        theirs = _row(session, "theirs", "running", "manual", now, "secret plans")
        mine = _row(session, "mine", "completed", "manual", now, "my work")
    scoped = api_key(services, ["mine"])
    page = site.page(f"/executions/{theirs}", key=scoped)
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert "secret plans" not in page.content()
    shoot(page, "not-found")
    resp = page.request.get(f"/executions/{theirs}")
    assert resp.status == 404
    assert page.request.get("/agents/theirs/tasks").status == 404
    page.goto("/executions")
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    expect(page.locator("#executions tbody tr").first).to_have_attribute("data-execution", mine)
    page.goto("/agents")
    expect(page.locator(".agent-card")).to_have_count(1)
    stream = page.request.get(f"/live/statuses?ids={theirs}", timeout=10_000)
    assert "theirs" not in stream.text() and "event: status" not in stream.text()


def test_a_write_without_the_csrf_token_is_refused(site: Site, demo: str) -> None:
    page = site.page("/agents/demo/tasks")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    url = "/api/agents/demo/task"
    refused = page.request.post(url, data={"message": "no token"})  # the cookie, no Origin
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf"
    foreign = page.request.post(
        url, data={"message": "from elsewhere"}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status == 403
    accepted = page.request.post(
        url, data={"message": "with token"}, headers={"X-CSRF-Token": token}
    )
    assert accepted.status == 202


def test_the_transcript_resumes_after_the_stream_is_cut(
    site: Site, demo: str, services: Services, api_url: str
) -> None:
    proxy = CuttableProxy(int(api_url.rsplit(":", 1)[1]))
    try:
        site.url = proxy.url
        execution_id = submit(site, "resume me lines=15 sleep=6")
        page = site.page(f"/executions/{execution_id}")
        expect(page.locator("#transcript .t-text", has_text="line 14")).to_be_visible()
        proxy.cut()
        expect(page.locator("[data-stream-state]")).to_contain_text("Reconnecting")
        expect(page.locator("[data-live-text]")).to_have_text("Reconnecting")
        shoot(page, "execution-reconnecting")
        proxy.resume()
        expect(badge(page)).to_have_text("completed", timeout=30_000)
        row = finished(services, execution_id)
        lines = [f"line {i}" for i in range(15)] + [f"demo: {row.message}"]
        texts = page.locator("#transcript .t-text").all_inner_texts()
        assert texts == lines  # each once, in order: no duplicate, no gap
        raw = page.locator("#raw").inner_text().strip().split("\n")
        with services.Session() as session:
            from shared.store import executions

            stored = executions.transcript(session, execution_id)
            assert stored is not None
            assert raw == stored.content.split("\n")
    finally:
        proxy.close()
