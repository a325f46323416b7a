"""Paid tasks (x402): `POST /api/paid/agents/{name}/task` and the payer's result link.

No API key: the payment is the credential. Without `PAYMENT-SIGNATURE` the answer is `402`
with `PAYMENT-REQUIRED` (the agent's price). A payment is looked up by its (payer, nonce)
before anything else, so a repeat is answered from the first one (never a second run); a new
one is checked (queue, validity window), verified by the facilitator, stored `verified`, and
its task submitted. The request then waits for the run: completed and settled is `200` with
`PAYMENT-RESPONSE`; ended otherwise is `200`, not charged; still running (or `"wait": false`)
is `202` with a link whose read token opens this one execution's result.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from decimal import Decimal
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from x402.http import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    encode_payment_response_header,
)
from x402.schemas import PaymentPayload, PaymentRequirements, ResourceInfo

from api.context import services
from api.validation import json_body, query_params
from api.waiting import wait_terminal
from producer import submit_execution
from producer.submit import refuse_if_full, validate_message
from shared import payments as x402
from shared.apikeys import hash_key
from shared.errors import AgxError, Conflict, NotFound
from shared.models import Agent, Execution, Payment
from shared.settings import Settings
from shared.states import ExecutionStatus, Trigger
from shared.store import agents, executions
from shared.store import payments as store
from shared.timefmt import iso

bp = Blueprint("paid", __name__, url_prefix="/api/paid")

#: Read tokens look unlike API keys and execution tokens.
READ_TOKEN_PREFIX = "agxpay_"
REPLAY_WAIT_SECONDS = 5.0  #: how long a repeat waits for the first request to store its run


class PaidTaskRequest(BaseModel):
    """Body of POST /api/paid/agents/{name}/task."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    #: wait for the run (up to the server's wait bound); false: 202 with a result link at once
    wait: bool = True


class ResultQuery(BaseModel):
    """The read token of GET /api/paid/executions/{id}."""

    token: str = Field(min_length=1, max_length=200)


class PaymentRequired(x402.PaymentRejected):
    """No payment was sent."""

    code = "payment_required"


def init_app(app: Flask, settings: Settings) -> None:
    """Register the routes; with paid tasks configured, check the facilitator now (a clear
    error at start: unreachable, or not supporting the network)."""
    app.register_blueprint(bp)
    if settings.x402_pay_to or settings.x402_facilitator_url:  # half set: a clear error
        paywall = x402.Paywall(settings)
        paywall.start()
        app.extensions["agx_paywall"] = paywall


def _paywall() -> x402.Paywall:
    paywall: x402.Paywall | None = current_app.extensions.get("agx_paywall")
    if paywall is None:
        raise x402.PaidTasksOff(
            "paid tasks are off on this server (AGX_X402_PAY_TO and AGX_X402_FACILITATOR_URL)"
        )
    return paywall


@bp.post("/agents/<name>/task")
@json_body(PaidTaskRequest)
def paid_task(name: str, body: PaidTaskRequest) -> Any:
    """Run a task paid with x402: 402 with the price, then verify, run, settle on success."""
    paywall = _paywall()
    agent = _for_sale(name)
    message = validate_message(body.message)
    window = x402.window_seconds(services().settings, agent.timeout_seconds)
    requirements = paywall.requirements(agent.price or Decimal(0), window + x402.SIGNING_SECONDS)
    if int(requirements.amount) <= 0:
        raise NotFound(f"agent '{name}' is not for sale (its price is below the asset's unit)")
    try:
        payment_id, execution_id, token = _pay(paywall, agent, message, requirements, window)
    except x402.PaymentRejected as exc:
        return _payment_required(paywall, requirements, agent, exc)
    return _answer(paywall, payment_id, execution_id, token, body.wait)


def _for_sale(name: str) -> Agent:
    with services().Session() as session:
        agent = agents.get(session, name)
    if agent is None or agent.price is None or agent.price <= 0:
        raise NotFound(f"agent '{name}' is not for sale")
    return agent


def _pay(
    paywall: x402.Paywall,
    agent: Agent,
    message: str,
    requirements: PaymentRequirements,
    window: int,
) -> tuple[str, str, str]:
    """(payment id, execution id, read token) of this request's payment, new or repeated."""
    header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
    if not header:
        raise PaymentRequired("payment_required", f"pay with the {PAYMENT_SIGNATURE_HEADER} header")
    payload = x402.decode(header)
    auth = x402.authorization(payload)
    with services().Session() as session:
        existing = store.by_authorization(session, auth.payer, auth.nonce)
    if existing is not None:
        return _repeat(existing, agent.name, message, auth)
    paywall.match(requirements, payload)
    with services().Session() as session:
        refuse_if_full(agent, agents.in_flight(session, agent.name))
    x402.require_window(auth, window)
    paywall.verify(payload, requirements)
    return _store_and_submit(agent, message, payload, requirements, auth)


def _store_and_submit(
    agent: Agent,
    message: str,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    auth: x402.Authorization,
) -> tuple[str, str, str]:
    """Store the verified payment, then submit its task (the payment goes if that is refused)."""
    svc, token = services(), READ_TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with svc.Session.begin() as session:
            payment_id = store.create(
                session,
                agent_name=agent.name,
                payer=auth.payer,
                nonce=auth.nonce,
                amount=Decimal(requirements.amount),
                asset=requirements.asset,
                network=requirements.network,
                message_sha256=_sha256(message),
                authorization_sha256=auth.digest,
                payload=payload.model_dump(mode="json", by_alias=True, exclude_none=True),
                requirements=requirements.model_dump(mode="json", by_alias=True, exclude_none=True),
                read_token_hash=hash_key(token),
            ).id
    except IntegrityError:  # the same payment, sent twice at once: the other one stored it
        with svc.Session() as session:
            existing = store.by_authorization(session, auth.payer, auth.nonce)
        if existing is None:
            raise Conflict("this payment is being processed by another request; retry") from None
        return _repeat(existing, agent.name, message, auth)
    try:
        submitted = submit_execution(
            svc, agent.name, message, triggered_by=Trigger.paid, source=auth.payer
        )
    except Exception:
        with svc.Session.begin() as session:
            store.forget(session, payment_id)  # no run: nothing to settle, the payer may retry
        raise
    with svc.Session.begin() as session:
        store.attach(session, payment_id, submitted.execution.id)
    return payment_id, submitted.execution.id, token


def _repeat(
    existing: Payment, agent: str, message: str, auth: x402.Authorization
) -> tuple[str, str, str]:
    """A payment seen before: the same request answers from its run; any other is a 409."""
    same = hmac.compare_digest(existing.authorization_sha256 or "", auth.digest)
    if not same:
        raise Conflict("this authorization's nonce was already used by another payment")
    paid_for = hmac.compare_digest(existing.message_sha256 or "", _sha256(message))
    if existing.agent_name != agent or not paid_for:
        raise Conflict(
            "this payment already paid for another task (a different message or agent);"
            " sign a new payment for this one"
        )
    execution_id = _stored_execution(existing)
    token = READ_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with services().Session.begin() as session:
        store.rotate_token(session, existing.id, hash_key(token))
    return existing.id, execution_id, token


def _stored_execution(payment: Payment) -> str:
    """The execution a payment bought, once the request that stored it has submitted it."""
    deadline = time.monotonic() + REPLAY_WAIT_SECONDS
    found: Payment | None = payment
    while found is not None and found.execution_id is None and time.monotonic() < deadline:
        time.sleep(0.05)
        with services().Session() as session:
            found = store.get(session, payment.id)
    if found is None or found.execution_id is None:
        raise Conflict("the first request with this payment has not stored its run; retry")
    return found.execution_id


def _answer(
    paywall: x402.Paywall, payment_id: str, execution_id: str, token: str, wait: bool
) -> Any:
    """200 once the run ended (settled, or not charged); 202 with the result link before."""
    svc = services()
    if wait:
        execution = wait_terminal(execution_id, svc.settings.wait_max_seconds)
    else:
        execution = _execution(execution_id)
    payment = _payment(payment_id)
    if ExecutionStatus(execution.status).terminal and payment.status == store.VERIFIED:
        x402.finish(svc, paywall, payment_id)  # settle (completed) or void, unless held
        payment = _settled_elsewhere(payment_id)
    if payment.status == store.SETTLED:
        header = encode_payment_response_header(x402.settle_response(payment))
        return jsonify(_result(execution, payment)), 200, {PAYMENT_RESPONSE_HEADER: header}
    if payment.status == store.VOIDED and execution.status == ExecutionStatus.completed:
        return _settlement_refused(paywall, execution, payment)
    if payment.status == store.VOIDED:
        return jsonify(_result(execution, payment)), 200
    return jsonify(_result(execution, payment, token)), 202


def _settled_elsewhere(payment_id: str) -> Payment:
    """The payment, after another process (the reaper) that holds it has finished it."""
    deadline = time.monotonic() + x402.FACILITATOR_TIMEOUT_SECONDS + 2
    payment = _payment(payment_id)
    while payment.status == store.VERIFIED and time.monotonic() < deadline:
        with services().Session() as session:
            if store.lock_to_finish(session, payment_id) is not None:
                break  # nobody holds it: it waits for a retry (the facilitator was away)
        time.sleep(0.1)
        payment = _payment(payment_id)
    return _payment(payment_id)


def _settlement_refused(paywall: x402.Paywall, execution: Execution, payment: Payment) -> Any:
    """The run completed but the facilitator refused to settle: 402, the result withheld."""
    reason = (payment.last_error or "settlement refused").removeprefix("settlement refused: ")
    requirements = PaymentRequirements.model_validate(payment.requirements or {})
    resource = ResourceInfo(url=request.base_url, mime_type="application/json")
    header = paywall.payment_required(requirements, resource, reason)
    error = x402.PaymentRejected(reason, "the payment could not be settled; nothing delivered")
    error.code = "settlement_failed"
    body = {**error.to_dict(), "execution": _result(execution, payment)}
    return jsonify(body), 402, _unpaid(header)


def _payment_required(
    paywall: x402.Paywall, requirements: PaymentRequirements, agent: Agent, exc: AgxError
) -> Any:
    """402 with PAYMENT-REQUIRED (the agent's price) and, for a refused payment, why."""
    reason = getattr(exc, "reason", None)
    resource = ResourceInfo(
        url=request.base_url,
        description=(agent.description or f"a task run by agent '{agent.name}'")[:500],
        mime_type="application/json",
    )
    error = "Payment required" if isinstance(exc, PaymentRequired) else reason
    header = paywall.payment_required(requirements, resource, error)
    return (
        jsonify(exc.to_dict()),
        402,
        {PAYMENT_REQUIRED_HEADER: header, "Cache-Control": "no-store"},
    )


@bp.get("/executions/<execution_id>")
@query_params(ResultQuery)
def paid_result(execution_id: str, query: ResultQuery) -> Any:
    """The result of one paid execution, for the holder of its read token (no API key)."""
    with services().Session() as session:
        payment = store.for_execution(session, execution_id)
        execution = executions.get(session, execution_id)
    stored = "" if payment is None else payment.read_token_hash or ""
    opens = hmac.compare_digest(stored.encode(), hash_key(query.token).encode())
    if payment is None or execution is None or not stored or not opens:
        raise NotFound("no paid execution opens with this token")
    return jsonify(_result(execution, payment))


def _result(execution: Execution, payment: Payment, token: str | None = None) -> dict[str, Any]:
    """What the payer sees: the run's outcome (its response once paid for) and the payment."""
    data: dict[str, Any] = {
        "execution_id": execution.id,
        "agent": execution.agent_name,
        "status": execution.status,
        "response": execution.response if payment.status == store.SETTLED else None,
        "error": execution.error,
        "created_at": iso(execution.created_at),
        "completed_at": iso(execution.completed_at),
        "payment": {
            "status": payment.status,
            "payer": payment.payer,
            "amount": str(payment.amount),
            "asset": payment.asset,
            "network": payment.network,
            "tx": payment.tx,
            "error": payment.last_error if payment.status != store.SETTLED else None,
        },
    }
    if token is not None:
        data["links"] = {"result": f"/api/paid/executions/{execution.id}?token={token}"}
    return data


def _execution(execution_id: str) -> Execution:
    with services().Session() as session:
        found = executions.get(session, execution_id)
    if found is None:
        raise NotFound(f"execution '{execution_id}' does not exist")
    return found


def _payment(payment_id: str) -> Payment:
    with services().Session() as session:
        found = store.get(session, payment_id)
    if found is None:
        raise NotFound("the payment no longer exists")
    return found


def _unpaid(payment_required: str) -> dict[str, str]:
    """The headers of a 402: the requirements, never cached."""
    return {PAYMENT_REQUIRED_HEADER: payment_required, "Cache-Control": "no-store"}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
