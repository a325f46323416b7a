"""Browser safety: revocable cookie sessions, CSRF, form bodies refused, authentication first."""

from __future__ import annotations

import base64
import binascii
import contextlib
import urllib.parse
import zlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from api.app import create_app
from producer import submit_execution
from shared.apikeys import hash_key
from shared.models import Agent, ApiKey, BrowserSession, Execution, utcnow
from shared.store.keys import create_key
from tests.conftest import app_client, statuses

ORIGIN = "http://localhost"
EVIL = "http://evil.example"
FORM = "application/x-www-form-urlencoded"


def browser(services) -> Any:
    """A test client that sends no bearer header and keeps no cookies of its own."""
    app = create_app(services=services)
    app.testing = True
    return app.test_client(use_cookies=False)


def login(web: Any, key: str, base_url: str = ORIGIN) -> tuple[str, Any]:
    """Sign in; returns the Cookie header value and the response."""
    resp = web.post("/api/session", json={"api_key": key}, base_url=base_url)
    assert resp.status_code == 200, resp.json
    return resp.headers["Set-Cookie"].split(";")[0], resp


def stop(web: Any, cookie: str, eid: str, **headers: str) -> Any:
    return web.post(
        f"/api/agents/demo/executions/{eid}/stop", headers={"Cookie": cookie, **headers}
    )


def decodings(value: str) -> list[str]:
    """The value and whatever base64 (then zlib) of it, or of its dotted parts, decodes to."""
    found = [value, urllib.parse.unquote(value)]
    for part in [value, *value.split(".")]:
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                raw = decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError):
                continue
            found.append(raw.decode("latin-1"))
            with contextlib.suppress(zlib.error):
                found.append(zlib.decompress(raw).decode("latin-1"))
    return found


# Item 14: sessions are rows, revocable, and the cookie carries no key material.


def test_a_copied_cookie_stops_working_once_its_session_is_signed_out(services, admin_key):
    web = browser(services)
    cookie, _ = login(web, admin_key)
    copy = cookie
    assert web.get("/api/agents", headers={"Cookie": copy}).status_code == 200
    out = web.delete("/api/session", headers={"Cookie": cookie, "Origin": ORIGIN})
    assert out.status_code == 204
    assert web.get("/api/agents", headers={"Cookie": copy}).status_code == 401


def test_the_cookie_holds_neither_the_key_nor_its_hash(services, admin_key):
    web = browser(services)
    cookie, resp = login(web, admin_key)
    header = resp.headers["Set-Cookie"]
    value = cookie.split("=", 1)[1]
    for text in decodings(value):
        assert admin_key not in text
        assert hash_key(admin_key) not in text
    assert "HttpOnly" in header and "SameSite=Lax" in header
    assert "Secure" not in header  # plain http: a Secure cookie would never come back
    assert admin_key not in resp.get_data(as_text=True)
    with services.Session() as db:
        rows = db.scalars(select(BrowserSession)).all()
    assert [r.token_hash for r in rows] == [hash_key(value)]  # the token itself is not stored


def test_the_cookie_is_secure_when_the_api_is_served_over_https(services, admin_key):
    web = browser(services)
    _, resp = login(web, admin_key, base_url="https://localhost")
    assert "; Secure" in resp.headers["Set-Cookie"]


def test_deleting_a_key_ends_its_browser_sessions(services):
    with services.Session.begin() as db:
        key = create_key(db, "doomed")
    web = browser(services)
    cookie, _ = login(web, key)
    assert web.get("/api/agents", headers={"Cookie": cookie}).status_code == 200
    with services.Session.begin() as db:
        db.delete(db.scalar(select(ApiKey).where(ApiKey.name == "doomed")))
    assert web.get("/api/agents", headers={"Cookie": cookie}).status_code == 401


def test_a_session_acts_with_its_key_s_current_scope(services, make_agent):
    make_agent("alpha")
    make_agent("beta")
    with services.Session.begin() as db:
        key = create_key(db, "scoped", agents=["alpha"])
    web = browser(services)
    cookie, resp = login(web, key)
    assert resp.json["role"] == "agent"
    names = [a["name"] for a in web.get("/api/agents", headers={"Cookie": cookie}).json["items"]]
    assert names == ["alpha"]
    with services.Session.begin() as db:
        db.execute(update(ApiKey).where(ApiKey.name == "scoped").values(agents=["beta"]))
    names = [a["name"] for a in web.get("/api/agents", headers={"Cookie": cookie}).json["items"]]
    assert names == ["beta"]


def test_an_expired_session_is_refused(services, admin_key):
    web = browser(services)
    cookie, _ = login(web, admin_key)
    with services.Session.begin() as db:
        db.execute(update(BrowserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert web.get("/api/agents", headers={"Cookie": cookie}).status_code == 401


def test_a_forged_or_legacy_cookie_is_refused(services, admin_key):
    web = browser(services)
    for cookie in ("agx_session=forged", f"session={hash_key(admin_key)}"):
        assert web.get("/api/agents", headers={"Cookie": cookie}).status_code == 401


# Item 13: cookie-authenticated writes must come from the API's own origin.


@pytest.fixture
def pending(services, make_agent) -> str:
    """A pending execution of agent `demo` (no workers run, so a stop cancels it at once)."""
    make_agent("demo")
    return submit_execution(services, "demo", "wait for me").execution.id


@pytest.mark.parametrize("content_type", [FORM, "multipart/form-data; boundary=x", "text/plain"])
def test_a_cross_origin_form_post_with_the_cookie_does_not_stop_a_run(
    services, admin_key, pending, content_type
):
    web = browser(services)
    cookie, _ = login(web, admin_key)
    resp = stop(web, cookie, pending, Origin=EVIL, **{"Content-Type": content_type})
    assert resp.status_code in (403, 415)
    assert resp.json["error"]["code"] in ("csrf", "unsupported_media_type")
    assert statuses(services, [pending]) == {pending: "pending"}
    same = stop(web, cookie, pending, Origin=ORIGIN)
    assert same.status_code == 200, same.json
    assert statuses(services, [pending]) == {pending: "cancelled"}


def test_a_cross_origin_call_with_the_cookie_is_refused_as_csrf(services, admin_key, pending):
    web = browser(services)
    cookie, _ = login(web, admin_key)
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {}):
        resp = stop(web, cookie, pending, **headers)
        assert resp.status_code == 403, headers
        assert resp.json["error"]["code"] == "csrf"
    assert statuses(services, [pending]) == {pending: "pending"}


def test_a_same_origin_fetch_without_origin_is_accepted(services, admin_key, pending):
    web = browser(services)
    cookie, _ = login(web, admin_key)
    assert stop(web, cookie, pending, **{"Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_the_csrf_token_from_sign_in_admits_a_call_from_anywhere(services, admin_key, pending):
    web = browser(services)
    cookie, resp = login(web, admin_key)
    token = resp.json["csrf_token"]
    assert stop(web, cookie, pending, Origin=EVIL, **{"X-CSRF-Token": "x" * 43}).status_code == 403
    assert web.get("/api/session", headers={"Cookie": cookie}).json["csrf_token"] == token
    ok = stop(web, cookie, pending, Origin=EVIL, **{"X-CSRF-Token": token})
    assert ok.status_code == 200
    other, _ = login(web, admin_key)
    refused = web.delete("/api/session", headers={"Cookie": other, "X-CSRF-Token": token})
    assert refused.status_code == 403  # a token is bound to its own session


def test_an_allowed_origin_may_call_with_the_cookie(services, admin_key, pending):
    from dataclasses import replace

    from shared.services import Services

    allowed = Services(replace(services.settings, allowed_origins=("https://ui.example",)))
    try:
        web = browser(allowed)
        cookie, _ = login(web, admin_key)
        assert stop(web, cookie, pending, Origin="https://ui.example").status_code == 200
    finally:
        allowed.close()


def test_a_bearer_key_needs_no_origin_check(services, admin_key, pending):
    client = app_client(services, admin_key)
    resp = client.post(f"/api/agents/demo/executions/{pending}/stop", headers={"Origin": EVIL})
    assert resp.status_code == 200


@pytest.mark.parametrize("content_type", [FORM, "multipart/form-data; boundary=x", "text/plain"])
def test_json_endpoints_refuse_form_bodies_whatever_the_auth(services, admin_key, content_type):
    client = app_client(services, admin_key)
    body = '{"name": "formed", "command": ["true"]}'
    for method in (client.post, client.put, client.patch):
        resp = method("/api/agents", data=body, headers={"Content-Type": content_type})
        assert resp.status_code == 415
        assert resp.json["error"]["code"] == "unsupported_media_type"
    login = browser(services).post(
        "/api/session", data=f'{{"api_key": "{admin_key}"}}', content_type=content_type
    )
    assert login.status_code == 415
    assert "Set-Cookie" not in login.headers
    with services.Session() as db:
        assert db.scalar(select(Agent).where(Agent.name == "formed")) is None


def test_a_body_without_a_content_type_is_refused_but_an_empty_post_is_fine(
    services, admin_key, pending
):
    client = app_client(services, admin_key)
    resp = client.post("/api/agents", data=b'{"name": "x", "command": ["true"]}')
    assert resp.status_code == 415
    assert client.post(f"/api/agents/demo/executions/{pending}/stop").status_code == 200
    with services.Session() as db:
        assert db.get(Execution, pending).status == "cancelled"


# Item 15: every /api route but sign-in authenticates before anything else.


def test_an_unauthenticated_request_gets_401_before_its_body_is_read(services, make_agent):
    make_agent("demo")
    web = browser(services)
    for path, body in (("/api/agents", {"name": 5}), ("/api/agents/demo/task", {})):
        resp = web.post(path, json=body)
        assert resp.status_code == 401
        assert resp.json["error"]["code"] == "unauthorized"
    assert web.get("/api/executions?limit=nope").status_code == 401
    assert web.post("/api/agents", data="not json", content_type=FORM).status_code == 401


def test_an_unauthenticated_request_cannot_tell_which_schedules_exist(
    services, admin_key, make_agent
):
    make_agent("demo")
    client = app_client(services, admin_key)
    body = {"cron": "@daily", "message": "m"}
    schedule_id = client.post("/api/agents/demo/schedules", json=body).json["id"]
    web = browser(services)
    answers = {
        path: web.get(path)
        for path in (f"/api/schedules/{schedule_id}", "/api/schedules/nope", "/api/schedules/a%00b")
    }
    assert {p: r.status_code for p, r in answers.items()} == dict.fromkeys(answers, 401)
    assert len({r.get_data() for r in answers.values()}) == 1
    for method in (web.patch, web.delete):
        assert method(f"/api/schedules/{schedule_id}", json={"enabled": False}).status_code == 401
    assert web.get("/api/no/such/route").status_code == 401
    bad = web.get("/api/agents", headers={"Authorization": "Bearer agx_wrong"})
    assert bad.status_code == 401


def test_health_and_the_spec_stay_open(services):
    web = browser(services)
    assert web.get("/healthz").status_code == 200
    assert web.get("/readyz").status_code in (200, 503)
    assert web.get("/openapi.json").status_code == 200
