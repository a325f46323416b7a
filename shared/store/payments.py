"""The payments table (x402): one row per signed authorization, from verified to settled or
voided. Few statements per paid request or reaper sweep: SQLAlchemy on the caller's Session."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from shared.models import Execution, Payment, utcnow

VERIFIED, SETTLED, VOIDED = "verified", "settled", "voided"


def create(session: Session, **values: Any) -> Payment:
    """Store a verified payment (raises IntegrityError when its (payer, nonce) exists)."""
    payment = Payment(status=VERIFIED, **values)
    session.add(payment)
    session.flush()
    return payment


def by_authorization(session: Session, payer: str, nonce: str) -> Payment | None:
    """The payment of this (payer, nonce), or None."""
    return session.scalar(select(Payment).where(Payment.payer == payer, Payment.nonce == nonce))


def get(session: Session, payment_id: str) -> Payment | None:
    """The payment, read afresh, or None."""
    return session.get(Payment, payment_id, populate_existing=True)


def for_execution(session: Session, execution_id: str) -> Payment | None:
    """The payment that paid for this execution, or None."""
    return session.scalar(select(Payment).where(Payment.execution_id == execution_id))


def forget(session: Session, payment_id: str) -> None:
    """Delete a payment whose run was never stored (its submission was refused)."""
    session.execute(delete(Payment).where(Payment.id == payment_id))


def lock_to_finish(session: Session, payment_id: str) -> tuple[Payment, str | None] | None:
    """Lock a verified payment (skipping one another process holds) with its execution's
    status (None when the execution is gone); None when settled, voided, locked or missing."""
    row = session.execute(
        select(Payment, Execution.status)
        .outerjoin(Execution, Execution.id == Payment.execution_id)
        .where(Payment.id == payment_id, Payment.status == VERIFIED)
        .with_for_update(of=Payment, skip_locked=True)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def due(session: Session, ended: tuple[str, ...], limit: int) -> list[str]:
    """Ids of verified payments whose execution has ended (or is gone) and that are not
    waiting out a backoff: the reaper settles or voids them."""
    now = utcnow()
    rows = session.scalars(
        select(Payment.id)
        .outerjoin(Execution, Execution.id == Payment.execution_id)
        .where(
            Payment.status == VERIFIED,
            Payment.execution_id.is_not(None),
            or_(Payment.next_settle_at.is_(None), Payment.next_settle_at <= now),
            or_(Execution.id.is_(None), Execution.status.in_(ended)),
        )
        .order_by(Payment.next_settle_at.nulls_first())
        .limit(limit)
    )
    return list(rows)


def mark_settled(payment: Payment, tx: str) -> None:
    """The facilitator settled it: the payer is charged, once."""
    payment.status, payment.tx, payment.settled_at = SETTLED, tx, utcnow()
    payment.next_settle_at, payment.last_error = None, None


def mark_voided(payment: Payment, reason: str | None) -> None:
    """Never to be settled: the run did not complete, or the facilitator refused for good."""
    payment.status, payment.last_error, payment.next_settle_at = VOIDED, reason, None


def mark_retry(payment: Payment, error: str, next_at: datetime) -> None:
    """The facilitator did not answer: try again from `next_at`."""
    payment.settle_attempts += 1
    payment.last_error, payment.next_settle_at = error[:2000], next_at


def attach(session: Session, payment_id: str, execution_id: str) -> None:
    """Record the execution the payment bought."""
    payment = session.get(Payment, payment_id)
    if payment is not None:
        payment.execution_id = execution_id


def rotate_token(session: Session, payment_id: str, token_hash: str) -> None:
    """Replace the payment's read token (a repeated request gets a fresh link)."""
    payment = session.get(Payment, payment_id)
    if payment is not None:
        payment.read_token_hash = token_hash
