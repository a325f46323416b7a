"""Paid tasks (x402 protocol v2, the `exact` EVM scheme): requirements from an agent's price,
verification through the facilitator before the run, settlement only when the run completed.

The SDK's own pieces do the protocol: `x402ResourceServerSync` builds requirements and calls
the facilitator through `HTTPFacilitatorClientSync` (`/supported`, `/verify`, `/settle`).
Unlike the SDK's Flask middleware, which settles before the view does its work, a payment here
is verified, stored `verified`, and settled once its execution ends `completed` (by the paid
request itself, or by the reaper); a run that ends otherwise voids it, never submitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import httpx
from x402 import PaymentError, x402ResourceServerSync
from x402.http import (
    FacilitatorConfig,
    HTTPFacilitatorClientSync,
    decode_payment_signature_header,
    encode_payment_required_header,
)
from x402.mechanisms.evm.constants import ERR_SETTLEMENT_PENDING
from x402.mechanisms.evm.default_assets import find_default_asset
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas import (
    AssetAmount,
    PaymentPayload,
    PaymentRequirements,
    ResourceConfig,
    ResourceInfo,
    SettleResponse,
)
from x402.schemas.helpers import convert_to_token_amount

from shared.errors import AgxError
from shared.models import Payment, utcnow
from shared.services import Services
from shared.settings import Settings
from shared.states import TERMINAL, ExecutionStatus
from shared.store import payments

#: py_ecc, which x402[evm] imports, raises Python's recursion limit to 100,000 on import. With
#: it a deep recursion (a hostile, deeply nested JSON body) overflows the C stack and kills the
#: whole process instead of raising RecursionError, so the limit is put back within bounds.
SAFE_RECURSION_LIMIT = 3000
sys.setrecursionlimit(min(sys.getrecursionlimit(), SAFE_RECURSION_LIMIT))

log = logging.getLogger(__name__)

SCHEME = "exact"
FACILITATOR_TIMEOUT_SECONDS = 15.0  #: longest wait for one facilitator answer
#: an authorization must stay valid this long past the paid request's wait and the agent's
#: timeout, so that a run that completes at the last moment can still be settled
SETTLE_MARGIN_SECONDS = 60
#: the requirements ask for this much more, the time a client may take to sign and send
SIGNING_SECONDS = 60
MAX_BACKOFF_SECONDS = 300  #: longest pause between settlement tries of a facilitator away
SETTLE_BATCH = 20  #: payments the reaper settles or voids per sweep
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NETWORK = re.compile(r"eip155:[0-9]{1,20}")
#: what a facilitator that is away, slow or broken raises through the SDK's client
FACILITATOR_ERRORS = (httpx.HTTPError, ValueError, RuntimeError, PaymentError)


class PaidTasksOff(AgxError):
    """Paid tasks are not configured on this server: nothing is for sale (404)."""

    status = 404
    code = "paid_tasks_off"


class FacilitatorUnavailable(AgxError):
    """The facilitator did not answer (or answered nonsense): nothing was charged; retry."""

    status = 503
    code = "facilitator_unavailable"


class PaymentRejected(AgxError):
    """The payment was refused; `reason` is the x402 reason (the facilitator's, or ours)."""

    status = 402
    code = "payment_invalid"

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}" if message else reason, "PAYMENT-SIGNATURE")
        self.reason = reason

    def to_dict(self) -> dict[str, object]:
        """The error body, naming the reason."""
        body = super().to_dict()
        body["error"]["reason"] = self.reason  # type: ignore[index]
        return body


@dataclass(frozen=True)
class Authorization:
    """What identifies a signed payment: its payer and nonce, its deadline, and a digest."""

    payer: str  #: lower-case address
    nonce: str  #: lower-case
    valid_before: int  #: unix seconds
    digest: str  #: SHA-256 of the signed authorization and its signature


def configured(settings: Settings) -> bool:
    """True when paid tasks are on: a recipient and a facilitator are set."""
    return bool(settings.x402_pay_to and settings.x402_facilitator_url)


def check_settings(settings: Settings) -> None:
    """Refuse settings that cannot work, naming the variable (at start, never in a request)."""
    if bool(settings.x402_pay_to) != bool(settings.x402_facilitator_url):
        raise ValueError("set both AGX_X402_PAY_TO and AGX_X402_FACILITATOR_URL, or neither")
    if not _ADDRESS.fullmatch(settings.x402_pay_to or ""):
        raise ValueError("AGX_X402_PAY_TO must be an EVM address (0x + 40 hex digits)")
    if not _NETWORK.fullmatch(settings.x402_network):
        raise ValueError("AGX_X402_NETWORK must be a CAIP-2 EVM network like eip155:84532")
    url = settings.x402_facilitator_url or ""
    if not url.startswith(("http://", "https://")):
        raise ValueError("AGX_X402_FACILITATOR_URL must be an http:// or https:// URL")
    asset = settings.x402_asset
    if asset and find_default_asset(asset, settings.x402_network) is None:
        raise ValueError(
            f"AGX_X402_ASSET {asset[:60]} is not a token the x402 SDK knows on"
            f" {settings.x402_network} (its decimals and EIP-712 domain are unknown)"
        )


class Paywall:
    """The x402 resource server of one process: requirements, verify, settle."""

    def __init__(self, settings: Settings):
        check_settings(settings)
        self.pay_to: str = settings.x402_pay_to or ""
        self.network = settings.x402_network
        self.asset = settings.x402_asset
        self.url = (settings.x402_facilitator_url or "").rstrip("/")
        config = FacilitatorConfig(url=self.url, timeout=FACILITATOR_TIMEOUT_SECONDS)
        self.server = x402ResourceServerSync(HTTPFacilitatorClientSync(config))
        # The SDK's scheme class is typed looser than its own protocol says (payment_flows).
        self.server.register(self.network, ExactEvmServerScheme())  # type: ignore[arg-type]
        self._ready = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Ask the facilitator what it supports; a clear error when it is away or lacks ours."""
        with self._lock:
            if self._ready:
                return
            try:
                self.server.initialize()
            except FACILITATOR_ERRORS as exc:
                raise RuntimeError(
                    f"the x402 facilitator at {self.url} did not answer /supported: {exc}"
                ) from None
            if self.server.get_supported_kind(2, self.network, SCHEME) is None:
                raise RuntimeError(
                    f"the x402 facilitator at {self.url} does not support the '{SCHEME}'"
                    f" scheme on {self.network} (AGX_X402_NETWORK)"
                )
            self._ready = True
        self.requirements(Decimal("0.01"), 60)  # the asset and price conversion work

    def requirements(self, price: Decimal, window_seconds: int) -> PaymentRequirements:
        """What one task costs: `price` USD in the asset, valid for `window_seconds`."""
        config = ResourceConfig(
            scheme=SCHEME,
            pay_to=self.pay_to,
            price=self._price(price),
            network=self.network,
            max_timeout_seconds=window_seconds,
        )
        return self.server.build_payment_requirements(config)[0]

    def _price(self, price: Decimal) -> str | AssetAmount:
        usd = f"{price:f}"
        if not self.asset:
            return usd  # the SDK's default stablecoin (USDC) for the network
        found = find_default_asset(self.asset, self.network)
        assert found is not None  # check_settings
        return AssetAmount(amount=convert_to_token_amount(usd, found["decimals"]), asset=self.asset)

    def payment_required(
        self, requirements: PaymentRequirements, resource: ResourceInfo, error: str | None
    ) -> str:
        """The PAYMENT-REQUIRED header value (base64 JSON, x402 v2)."""
        answer = self.server.create_payment_required_response([requirements], resource, error)
        return encode_payment_required_header(answer)

    def match(self, requirements: PaymentRequirements, payload: PaymentPayload) -> None:
        """Refuse a payment made for other requirements (price, asset, recipient, window)."""
        if self.server.find_matching_requirements([requirements], payload) is None:
            raise PaymentRejected(
                "no_matching_requirements",
                "the payment does not accept what this task costs now; pay the current"
                " PAYMENT-REQUIRED",
            )

    def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> None:
        """Verify through the facilitator (signature, amount, recipient, time, balance)."""
        try:
            result = self.server.verify_payment(payload, requirements).verify
        except FACILITATOR_ERRORS as exc:
            log.warning("x402 verify failed at the facilitator: %s", exc)
            raise FacilitatorUnavailable(
                "the payment facilitator did not answer; nothing was charged, retry shortly"
            ) from None
        if not result.is_valid:
            raise PaymentRejected(result.invalid_reason or "invalid_payment", "")

    def settle(self, payload: dict[str, Any], requirements: dict[str, Any]) -> SettleResponse:
        """Submit a stored payment for settlement (raises what an absent facilitator raises)."""
        self.start()
        return self.server.settle_payment(
            PaymentPayload.model_validate(payload),
            PaymentRequirements.model_validate(requirements),
        )


def window_seconds(settings: Settings, agent_timeout_seconds: int) -> int:
    """How long an authorization must stay valid: the paid request's wait, the agent's
    timeout and the time to settle."""
    return int(settings.wait_max_seconds) + agent_timeout_seconds + SETTLE_MARGIN_SECONDS


def decode(header: str) -> PaymentPayload:
    """The PAYMENT-SIGNATURE header as an x402 v2 payment payload, or a 402 naming why not."""
    try:
        payload = decode_payment_signature_header(header)
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise PaymentRejected(
            "invalid_payment_header", "PAYMENT-SIGNATURE is not a base64 x402 payment payload"
        ) from None
    if not isinstance(payload, PaymentPayload) or payload.x402_version != 2:
        raise PaymentRejected("unsupported_version", "only x402 protocol version 2 is accepted")
    return payload


def authorization(payload: PaymentPayload) -> Authorization:
    """The payer, nonce and deadline a payload signs (EIP-3009 or Permit2 `exact`)."""
    inner = payload.payload
    signed = inner.get("authorization") or inner.get("permit2Authorization")
    if not isinstance(signed, dict):
        raise PaymentRejected("invalid_payload", "the payload holds no signed authorization")
    payer, nonce = signed.get("from"), signed.get("nonce")
    deadline = signed.get("validBefore", signed.get("deadline"))
    if not (isinstance(payer, str) and _ADDRESS.fullmatch(payer)):
        raise PaymentRejected("invalid_payload", "the authorization's 'from' is not an address")
    if not (isinstance(nonce, str) and 0 < len(nonce) <= 80 and nonce.isascii()):
        raise PaymentRejected("invalid_payload", "the authorization's nonce is malformed")
    if not (isinstance(deadline, str) and deadline.isascii() and deadline.isdigit()):
        raise PaymentRejected("invalid_payload", "the authorization has no valid deadline")
    canonical = json.dumps(
        {"authorization": signed, "signature": inner.get("signature")}, sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return Authorization(payer.lower(), nonce.lower(), int(deadline[:20]), digest)


def require_window(auth: Authorization, needed_seconds: int) -> None:
    """Refuse an authorization that expires before the run and its settlement could end."""
    left = auth.valid_before - int(utcnow().timestamp())
    if left < needed_seconds:
        raise PaymentRejected(
            "authorization_window_too_short",
            f"the authorization is valid for {max(left, 0)} s more; this task needs"
            f" {needed_seconds} s (the wait, the agent's timeout and settling)",
        )


_paywalls: dict[Settings, Paywall | None] = {}
_paywalls_lock = threading.Lock()


def paywall_for(settings: Settings) -> Paywall | None:
    """This process's paywall for these settings; None when paid tasks are off or misset."""
    with _paywalls_lock:
        if settings not in _paywalls:
            try:
                _paywalls[settings] = Paywall(settings) if configured(settings) else None
            except ValueError as exc:
                log.error("paid tasks are off: %s", exc)
                _paywalls[settings] = None
        return _paywalls[settings]


class Finish(StrEnum):
    """What finishing a payment did."""

    settled = "settled"
    voided = "voided"
    retry = "retry"  #: the facilitator was away: tried again later
    skipped = "skipped"  #: not finishable now (still running, held elsewhere, already done)


def finish(services: Services, paywall: Paywall | None, payment_id: str) -> Finish:
    """Settle a verified payment whose run completed, void one whose run ended otherwise.

    The row is locked (another holder is skipped) and its status re-checked under the lock,
    so a payment is submitted for settlement by one process at a time and, once settled,
    never again.
    """
    with services.Session.begin() as session:
        found = payments.lock_to_finish(session, payment_id)
        if found is None:
            return Finish.skipped
        payment, status = found
        if status is None or status in (ExecutionStatus.failed, ExecutionStatus.cancelled):
            payments.mark_voided(payment, f"not charged: the run ended {status or 'deleted'}")
            return Finish.voided
        if status != ExecutionStatus.completed:
            return Finish.skipped
        if paywall is None:
            payments.mark_retry(payment, "paid tasks are not configured", _next_try(payment))
            return Finish.retry
        return _settle(paywall, payment)


def _settle(paywall: Paywall, payment: Payment) -> Finish:
    try:
        answer = paywall.settle(payment.payload or {}, payment.requirements or {})
    except FACILITATOR_ERRORS as exc:
        log.warning("x402 settlement of payment %s failed, retrying later: %s", payment.id, exc)
        payments.mark_retry(payment, f"facilitator: {exc}", _next_try(payment))
        return Finish.retry
    if answer.success:
        payments.mark_settled(payment, answer.transaction)
        return Finish.settled
    if answer.error_reason == ERR_SETTLEMENT_PENDING:  # broadcast, not yet confirmed
        payments.mark_retry(payment, ERR_SETTLEMENT_PENDING, _next_try(payment))
        return Finish.retry
    log.warning("x402 settlement of payment %s refused: %s", payment.id, answer.error_reason)
    payments.mark_voided(payment, f"settlement refused: {answer.error_reason}")
    return Finish.voided


def _next_try(payment: Payment) -> Any:
    delay = min(2 ** min(payment.settle_attempts, 16), MAX_BACKOFF_SECONDS)
    return utcnow() + timedelta(seconds=delay)


def sweep(services: Services) -> list[str]:
    """The reaper's part: settle or void the payments whose runs have ended; stops at the
    first facilitator that is away (the rest keep their turn)."""
    with services.Session() as session:
        due = payments.due(session, tuple(s.value for s in TERMINAL), SETTLE_BATCH)
    if not due:
        return []
    paywall = paywall_for(services.settings)
    done = []
    for payment_id in due:
        outcome = finish(services, paywall, payment_id)
        if outcome in (Finish.settled, Finish.voided):
            done.append(payment_id)
        elif outcome is Finish.retry:
            break
    return done


def settle_response(payment: Payment) -> SettleResponse:
    """The PAYMENT-RESPONSE of a settled payment, rebuilt from its row."""
    return SettleResponse(
        success=True,
        transaction=payment.tx or "",
        network=payment.network,
        payer=payment.payer,
        amount=str(payment.amount),
    )
