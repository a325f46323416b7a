"""The OpenAPI spec, fuzzed: schemathesis drives the real app (real PostgreSQL and Redis).

Every generated request (valid and invalid, per operation) is sent three times: with an admin
key, with a key scoped to the seeded agent, and with no key. The run fails on any 5xx, any
response whose status, content type or body the spec does not describe, and any 2xx without
credentials. `AGX_FUZZ_EXAMPLES` bounds the examples per operation (small here, for CI; `make
fuzz` raises it) and `AGX_FUZZ_SEED` fixes the generation (a fixed seed by default, so CI is
reproducible; `make fuzz` draws a new one).

The SSE route is not fuzzed: a stream stays open while its execution lives, and the WSGI
client reads a response to its end; tests/test_events.py covers it against a real server.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from shared.models import Agent, Execution, Schedule, Transcript
from shared.services import Services
from shared.store.keys import create_key

MAX_EXAMPLES = int(os.environ.get("AGX_FUZZ_EXAMPLES", "20"))
_SEED = os.environ.get("AGX_FUZZ_SEED", "fixed")
SEED = None if _SEED == "random" else _SEED
#: Operations a caller without credentials may get a 2xx from.
PUBLIC = {("POST", "/api/session")}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
STREAMS = r"/events$"


@dataclass
class Fuzz:
    """The app under test, its keys by caller and the seeded rows fuzzed paths can hit."""

    app: Any
    services: Services
    keys: dict[str, str | None]
    make_agent: Callable[..., Agent]
    execution_id: str = "fuzzexec1"
    schedule_id: str = "fuzzsched1"
    tally: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def reseed(self) -> None:
        """Put the seeded agent and execution back, should a fuzzed DELETE have removed them."""
        with self.services.Session() as session:
            present = session.get(Agent, "alpha") is not None
        if not present:
            self.make_agent("alpha", description="seeded for fuzzing")
        with self.services.Session.begin() as session:
            if session.get(Execution, self.execution_id) is None:
                session.add(
                    Execution(
                        id=self.execution_id,
                        agent_name="alpha",
                        message="seeded",
                        status="completed",
                        response="done",
                    )
                )
                session.add(Transcript(execution_id=self.execution_id, content="seeded\n"))
            if session.get(Schedule, self.schedule_id) is None:
                session.add(
                    Schedule(
                        id=self.schedule_id,
                        agent_name="alpha",
                        name="seeded",
                        cron="@daily",
                        message="seeded",
                        created_from_execution_id=self.execution_id,
                    )
                )


@pytest.fixture
def fuzz(services: Services, make_agent: Callable[..., Agent]) -> Iterator[Fuzz]:
    # `wait: true` must not hold a request for minutes: no worker runs here.
    quick = Services(replace(services.settings, wait_max_seconds=0.2), pool_size=5)
    with quick.Session.begin() as session:
        admin = create_key(session, "fuzz-admin")
        scoped = create_key(session, "fuzz-alpha", agents=["alpha"])
    app = create_app(services=quick)
    app.testing = True
    found = Fuzz(app, quick, {"none": None, "scoped": scoped, "admin": admin}, make_agent)
    found.reseed()
    yield found
    quick.close()


@pytest.fixture
def api_schema(fuzz: Fuzz) -> Any:
    """The app's own /openapi.json, with the seeded ids mixed into generated path values."""
    real = {
        "agents": ["alpha"],
        "executions": [fuzz.execution_id],
        "schedules": [fuzz.schedule_id],
    }
    config = schemathesis.Config.from_dict(
        {
            "warnings": False,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "dictionaries": {name: {"values": values} for name, values in real.items()},
            "parameters": {
                "path.name": {"dictionary": "agents", "probability": 0.6},
                "path.execution_id": {"dictionary": "executions", "probability": 0.6},
                "path.schedule_id": {"dictionary": "schedules", "probability": 0.6},
                "body.from_execution_id": {"dictionary": "executions", "probability": 0.5},
            },
        }
    )
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz.app, config=config)


def test_the_api_answers_every_generated_request_as_its_spec_says(
    api_schema: Any, fuzz: Fuzz
) -> None:
    findings: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if re.search(STREAMS, operation.path):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), fuzz)
            except Exception as exc:  # every operation's findings, not only the first one's
                findings.append(f"{operation.label} ({mode.value}): {exc}")
    print(
        "\n".join(
            f"{n:5} {op} {who} {status}" for (op, who, status), n in sorted(fuzz.tally.items())
        )
    )
    assert not findings, "\n\n".join(findings)


def _fuzz(strategy: Any, fuzz: Fuzz) -> None:
    """Send each generated case as each caller; raise on the first bad answer."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is not None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example touches the DB
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        fuzz.reseed()
        for who, key in fuzz.keys.items():
            status = _send(case, who, key)
            fuzz.tally[(f"{case.method.upper()} {case.path}", who, status)] += 1

    run()


def _send(case: Any, who: str, key: str | None) -> int:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    case.headers = headers
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    public = (case.method.upper(), case.path) in PUBLIC
    assert key is not None or public or response.status_code >= 400, (
        f"{case.method.upper()} {case.formatted_path} answered {response.status_code}"
        f" to a caller without credentials ({who})"
    )
    return int(response.status_code)


def test_the_spec_documents_real_statuses_and_the_error_body_per_operation(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    expected = {
        ("post", "/api/agents"): {"201", "401", "403", "409", "413", "415", "422", "503"},
        ("delete", "/api/agents/{name}"): {"204", "401", "403", "404", "409", "503"},
        ("post", "/api/agents/{name}/task"): {"200", "202", "404", "409", "413", "429", "503"},
        ("post", "/api/agents/{name}/executions/{execution_id}/stop"): {"200", "202", "404"},
        ("get", "/api/executions/{execution_id}/events"): {"200", "404", "422", "429", "503"},
        ("post", "/api/session"): {"200", "401", "413", "415", "422"},
    }
    for (method, path), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (method, path)
    for path, operations in paths.items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
    assert paths["/api/session"]["post"]["security"] == []


def test_the_events_route_documents_last_event_id_and_its_media_type(client: Any) -> None:
    op = client.get("/openapi.json").get_json()["paths"]["/api/executions/{execution_id}/events"]
    names = {(p["in"], p["name"]) for p in op["get"]["parameters"]}
    assert {("header", "Last-Event-ID"), ("query", "last_event_id")} <= names
    assert "text/event-stream" in op["get"]["responses"]["200"]["content"]
