"""Paid tasks (x402 v2): the SDK's own client pays from a test EVM key; a real facilitator
(the SDK's, exact EVM scheme) checks every payment, with an in-memory ledger for a chain."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from x402 import x402ClientSync
from x402.http import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
    x402HTTPClientSync,
)
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.schemas import PaymentPayload

from agx.apply import apply_file
from api.app import create_app
from shared import payments as x402
from shared.models import Agent, Execution, Payment
from shared.services import Services
from tests.conftest import wait_for
from tests.x402_facilitator import NETWORK, USDC, Facilitator, running
from workers import reaper

PAY_TO = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20
PAYER = Account.from_key("0x" + "11" * 32)
TASK = "/api/paid/agents/seller/task"


@pytest.fixture
def facilitator() -> Iterator[Facilitator]:
    with running() as found:
        found.ledger.fund(USDC, PAYER.address, 10_000_000)  # 10 USDC
        yield found


@pytest.fixture
def paid(services: Services, facilitator: Facilitator) -> Iterator[Services]:
    settings = replace(
        services.settings,
        x402_pay_to=PAY_TO,
        x402_facilitator_url=facilitator.url,
        wait_max_seconds=30,
    )
    found = Services(settings, pool_size=5)
    yield found
    found.close()


@pytest.fixture
def api(paid: Services) -> Any:
    """A test client of the API, with no key: payers have none."""
    app = create_app(services=paid)
    app.testing = True
    return app.test_client()


@pytest.fixture
def seller(make_agent: Callable[..., Agent]) -> Agent:
    return make_agent("seller", price=Decimal("0.05"), timeout_seconds=60)


def _payer() -> x402HTTPClientSync:
    client = x402ClientSync()
    client.register(NETWORK, ExactEvmClientScheme(PAYER))
    return x402HTTPClientSync(client)


def _paying(api: Any, body: dict[str, Any]) -> dict[str, str]:
    """Ask, get the 402, and have the SDK's client sign what it asks for: the header to send."""
    unpaid = api.post(TASK, json=body)
    assert unpaid.status_code == 402, unpaid.json
    headers, _ = _payer().handle_402_response(dict(unpaid.headers), unpaid.data, TASK)
    return headers


def _rows(services: Services) -> tuple[list[Execution], list[Payment]]:
    with services.Session() as session:
        return (
            list(session.scalars(select(Execution))),
            list(session.scalars(select(Payment))),
        )


def test_a_paid_task_is_402_then_runs_once_paid_and_settles(
    api, paid, seller, facilitator, processes
):
    unpaid = api.post(TASK, json={"message": "hello"})
    assert unpaid.status_code == 402 and unpaid.json["error"]["code"] == "payment_required"
    asked = decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"]).accepts[0]
    assert (asked.amount, asked.pay_to, asked.network, asked.asset) == (
        "50000",
        PAY_TO,
        NETWORK,
        USDC,
    )
    assert asked.max_timeout_seconds >= 30 + 60  # the wait and the agent's timeout
    processes.workers()

    answer = api.post(TASK, json={"message": "hello"}, headers=_paying(api, {"message": "hello"}))

    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "completed" and answer.json["response"]
    receipt = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.transaction == answer.json["payment"]["tx"]
    [transfer] = facilitator.ledger.transfers
    assert (transfer.payer, transfer.to, transfer.value) == (PAYER.address, PAY_TO, 50_000)
    [execution], [payment] = _rows(paid)
    assert (execution.triggered_by, execution.source) == ("paid", PAYER.address.lower())
    assert (payment.status, payment.tx, payment.execution_id) == (
        "settled",
        transfer.tx,
        execution.id,
    )


def test_the_same_payment_again_answers_from_the_same_execution(
    api, paid, seller, facilitator, processes
):
    processes.workers()
    paying = _paying(api, {"message": "hello"})
    first = api.post(TASK, json={"message": "hello"}, headers=paying)
    again = api.post(TASK, json={"message": "hello"}, headers=paying)

    assert first.status_code == again.status_code == 200
    assert again.json["execution_id"] == first.json["execution_id"]
    assert again.headers["PAYMENT-RESPONSE"] == first.headers["PAYMENT-RESPONSE"]
    other = api.post(TASK, json={"message": "something else"}, headers=paying)
    assert other.status_code == 409, other.json
    executions, payments = _rows(paid)
    assert len(executions) == len(payments) == len(facilitator.ledger.transfers) == 1
    assert facilitator.calls["verify"] == facilitator.calls["settle"] == 1


def test_a_failing_run_voids_its_payment_and_charges_nothing(
    api, paid, seller, facilitator, processes
):
    processes.workers()
    body = {"message": "exit=3"}
    answer = api.post(TASK, json=body, headers=_paying(api, body))

    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "failed" and answer.json["payment"]["status"] == "voided"
    assert "PAYMENT-RESPONSE" not in answer.headers
    assert facilitator.ledger.transfers == [] and facilitator.calls["settle"] == 0
    assert x402.sweep(paid) == []  # the reaper has nothing left to settle
    assert facilitator.calls["settle"] == 0


def _tamper_amount(payload: PaymentPayload) -> None:
    payload.payload["authorization"]["value"] = "1"


def _not_yet_valid(payload: PaymentPayload) -> None:
    payload.payload["authorization"]["validAfter"] = str(int(time.time()) + 3600)


def _bad_signature(payload: PaymentPayload) -> None:
    signature = payload.payload["signature"]
    flipped = "1" if signature[10] != "1" else "2"
    payload.payload["signature"] = signature[:10] + flipped + signature[11:]


def _signed(
    api: Any, body: dict[str, Any], change: Callable[..., None] | None, **asked: Any
) -> str:
    """A payment the SDK's client signed, for requirements altered by `asked`, then `change`d;
    it claims to accept what the server asked."""
    unpaid = api.post(TASK, json=body)
    required = decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"])
    signing = required.model_copy(deep=True)
    for name, value in asked.items():
        setattr(signing.accepts[0], name, value)
    client = x402ClientSync()
    client.register(NETWORK, ExactEvmClientScheme(PAYER))
    payload = client.create_payment_payload(signing)
    payload.accepted = required.accepts[0]
    if change is not None:
        change(payload)
    return encode_payment_signature_header(payload)


@pytest.mark.parametrize(
    ("change", "asked", "reason"),
    [
        (_tamper_amount, {}, "invalid_exact_evm_payload_authorization_value_mismatch"),
        (None, {"pay_to": OTHER}, "invalid_exact_evm_payload_recipient_mismatch"),
        (None, {"max_timeout_seconds": 5}, "authorization_window_too_short"),
        (_not_yet_valid, {}, "invalid_exact_evm_payload_authorization_valid_after"),
        (_bad_signature, {}, "invalid_exact_evm_payload_signature"),
    ],
    ids=["tampered-amount", "wrong-recipient", "expired", "not-yet-valid", "bad-signature"],
)
def test_a_refused_payment_is_402_naming_the_reason(
    api, paid, seller, facilitator, change, asked, reason
):
    body = {"message": "hello"}
    header = _signed(api, body, change, **asked)

    answer = api.post(TASK, json=body, headers={"PAYMENT-SIGNATURE": header})

    assert answer.status_code == 402, answer.json
    assert answer.json["error"]["reason"] == reason
    assert decode_payment_required_header(answer.headers["PAYMENT-REQUIRED"]).error == reason
    assert _rows(paid) == ([], []) and facilitator.ledger.transfers == []


def test_garbage_in_the_payment_header_is_402_never_a_500(api, seller):
    for junk in ("!!!", "e30=", "W10=", "bnVsbA==", "eyJ4NDAyVmVyc2lvbiI6IDF9"):
        answer = api.post(TASK, json={"message": "hi"}, headers={"PAYMENT-SIGNATURE": junk})
        assert answer.status_code == 402, (junk, answer.json)
        assert answer.json["error"]["field"] == "PAYMENT-SIGNATURE"


def test_a_full_queue_is_refused_before_verifying(api, paid, make_agent, facilitator):
    make_agent(
        "seller", price=Decimal("0.05"), timeout_seconds=60, max_parallel_tasks=1, queue_limit=0
    )
    with paid.Session.begin() as session:
        session.add(Execution(agent_name="seller", message="busy", status="running"))
    body = {"message": "hello"}
    answer = api.post(TASK, json=body, headers={"PAYMENT-SIGNATURE": _signed(api, body, None)})

    assert answer.status_code == 429 and answer.json["error"]["code"] == "queue_full"
    assert facilitator.calls["verify"] == 0


def test_an_agent_without_a_price_is_not_for_sale(api, make_agent):
    make_agent("free")
    answer = api.post("/api/paid/agents/free/task", json={"message": "hi"})
    assert answer.status_code == 404 and "not for sale" in answer.json["error"]["message"]
    assert api.post("/api/paid/agents/nobody/task", json={"message": "hi"}).status_code == 404


def test_wait_false_is_202_with_a_link_that_opens_that_execution_only(
    api, paid, seller, facilitator, processes, admin_key
):
    processes.workers()
    body = {"message": "sleep=1", "wait": False}
    accepted = api.post(TASK, json=body, headers=_paying(api, body))
    assert accepted.status_code == 202, accepted.json
    link = accepted.json["links"]["result"]
    assert accepted.json["payment"]["status"] == "verified" and accepted.json["response"] is None

    def settled() -> Any:
        reaper.sweep(paid)  # the reaper settles it
        found = api.get(link).json
        return found if found["payment"]["status"] == "settled" else None

    result = wait_for(settled, 30, 0.2, "the reaper to settle")
    assert result["status"] == "completed" and result["response"]
    assert len(facilitator.ledger.transfers) == 1
    execution_id = accepted.json["execution_id"]
    with paid.Session.begin() as session:  # another execution: the token does not open it
        other = Execution(agent_name="seller", message="other", status="completed", response="x")
        session.add(other)
        session.flush()
        other_id = other.id
    token = link.split("token=")[1]
    assert api.get(f"/api/paid/executions/{other_id}?token={token}").status_code == 404
    assert api.get(f"/api/paid/executions/{execution_id}?token=agxpay_wrong").status_code == 404
    assert api.get(f"/api/paid/executions/{execution_id}?token={admin_key}").status_code == 404
    assert api.get(f"/api/paid/executions/{execution_id}").status_code == 422
    keyed = api.get(
        f"/api/paid/executions/{execution_id}", headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert keyed.status_code == 422  # a key opens nothing here


def test_a_facilitator_away_at_settle_time_is_retried_by_the_reaper_and_settles_once(
    api, paid, seller, facilitator, processes
):
    processes.workers()
    body = {"message": "hello"}
    facilitator.settle_away = True
    answer = api.post(TASK, json=body, headers=_paying(api, body))

    assert answer.status_code == 202, answer.json  # completed, but not yet paid for
    assert answer.json["status"] == "completed" and answer.json["response"] is None
    [_], [payment] = _rows(paid)
    assert payment.status == "verified" and payment.settle_attempts == 1 and payment.last_error
    assert x402.sweep(paid) == []  # backing off
    facilitator.settle_away = False
    wait_for(lambda: x402.sweep(paid), 30, 0.2, "the reaper to settle")
    [_], [payment] = _rows(paid)
    assert payment.status == "settled" and len(facilitator.ledger.transfers) == 1
    assert x402.sweep(paid) == [] and len(facilitator.ledger.transfers) == 1  # never twice
    again = api.post(TASK, json=body, headers=_paying_again(answer))
    assert again.status_code == 200 and again.json["response"]


def _paying_again(answer: Any) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": answer.request.headers["PAYMENT-SIGNATURE"]}


def test_paid_tasks_are_off_without_settings(client, make_agent):
    make_agent("seller", price=Decimal("0.05"))
    answer = client.post(TASK, json={"message": "hi"})
    assert answer.status_code == 404 and answer.json["error"]["code"] == "paid_tasks_off"


def _start(settings: Any) -> None:
    """Build the API on these settings (and let its connections go)."""
    found = Services(settings, pool_size=1)
    try:
        create_app(services=found)
    finally:
        found.close()


def test_a_facilitator_that_lacks_the_network_or_is_away_fails_api_start(services):
    with running(networks=("eip155:1",)) as other:
        settings = replace(services.settings, x402_pay_to=PAY_TO, x402_facilitator_url=other.url)
        with pytest.raises(RuntimeError, match="does not support the 'exact' scheme on eip155:84"):
            _start(settings)
    with pytest.raises(RuntimeError, match="did not answer /supported"):
        _start(settings)  # its server is closed now
    with pytest.raises(ValueError, match="AGX_X402_FACILITATOR_URL"):
        _start(replace(services.settings, x402_pay_to=PAY_TO))


def test_agents_apply_accepts_a_price(services: Services, tmp_path: Path) -> None:
    spec = tmp_path / "agents.yaml"
    spec.write_text('agents:\n  - name: seller\n    command: ["x"]\n    price: "0.05"\n')
    apply_file(services, spec)
    with services.Session() as session:
        agent = session.get(Agent, "seller")
        assert agent is not None and agent.price == Decimal("0.05")
