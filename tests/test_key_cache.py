"""API keys are trusted for AGX_KEY_CACHE_SECONDS after they authenticate: a deleted key stops
working within that bound, and a key that never authenticated is never cached."""

from __future__ import annotations

import time
from dataclasses import replace

from shared.apikeys import hash_key
from shared.models import ApiKey
from shared.store.keys import create_key
from tests.conftest import app_client, wait_for


def test_a_deleted_key_stops_working_within_the_cache_bound(services):
    services.settings = replace(services.settings, key_cache_seconds=1.0)
    with services.Session.begin() as session:
        key = create_key(session, "doomed")
    client = app_client(services, key)
    assert client.get("/api/agents").status_code == 200
    with services.Session.begin() as session:
        session.query(ApiKey).filter(ApiKey.key_hash == hash_key(key)).delete()
    deleted_at = time.monotonic()
    assert client.get("/api/agents").status_code == 200, "trusted from the cache meanwhile"
    wait_for(lambda: client.get("/api/agents").status_code == 401, 5, 0.05, "the 401")
    assert time.monotonic() - deleted_at <= 1.5


def test_with_the_cache_off_a_deleted_key_stops_at_once_and_new_keys_work_at_once(services):
    services.settings = replace(services.settings, key_cache_seconds=0)
    client = app_client(services, "agx_not-yet-a-key")
    assert client.get("/api/agents").status_code == 401
    with services.Session.begin() as session:
        create_key(session, "later", key="agx_not-yet-a-key")
    assert client.get("/api/agents").status_code == 200, "a refusal is never cached"
    with services.Session.begin() as session:
        session.query(ApiKey).filter(ApiKey.name == "later").delete()
    assert client.get("/api/agents").status_code == 401
