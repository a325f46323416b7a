"""The keys store: API keys, browser sessions and execution tokens (see `shared.apikeys` for
what they mean)."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from shared.apikeys import KEY_NAME, KEY_NAME_RULE, KEY_PREFIX, Principal, hash_key
from shared.models import ApiKey, BrowserSession, Execution, utcnow
from shared.states import ExecutionStatus, Trigger


def create_key(
    session: Session, name: str, agents: list[str] | None = None, key: str | None = None
) -> str:
    """Store a new key (admin, or scoped to `agents`); returns the plain key, shown once."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError(f"key name {name[:80]!r}: {KEY_NAME_RULE}")
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            name=name,
            key_hash=hash_key(key),
            role="agent" if agents else "admin",
            agents=list(agents or []),
        )
    )
    return key


def ensure_admin_key(session: Session, key: str, name: str = "admin") -> bool:
    """Make sure `key` exists as an admin key; returns True when it was added."""
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))):
        return False
    taken = session.scalar(select(ApiKey).where(ApiKey.name == name))
    create_key(session, f"{name}-{secrets.token_hex(3)}" if taken else name, key=key)
    return True


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal for a presented key, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return Principal.of(row) if row else None


def start_session(session: Session, key: str, lifetime: timedelta) -> tuple[str, Principal] | None:
    """Store a browser session for a valid key; returns (its plain token, the principal)."""
    # FOR KEY SHARE: a key deleted at the same moment waits, so the insert cannot dangle.
    row = session.scalar(
        select(ApiKey)
        .where(ApiKey.key_hash == hash_key(key))
        .with_for_update(read=True, key_share=True)
    )
    if row is None:
        return None
    now = utcnow()
    ended = or_(BrowserSession.expires_at <= now, BrowserSession.revoked_at.is_not(None))
    session.execute(delete(BrowserSession).where(BrowserSession.api_key_id == row.id, ended))
    token = secrets.token_urlsafe(32)
    session.add(
        BrowserSession(
            token_hash=hash_key(token), api_key_id=row.id, created_at=now, expires_at=now + lifetime
        )
    )
    return token, Principal.of(row)


def authenticate_session(session: Session, token: str) -> Principal | None:
    """The principal of a live browser session (its key's current role and scope), or None."""
    row = session.scalar(
        select(ApiKey)
        .join(BrowserSession, BrowserSession.api_key_id == ApiKey.id)
        .where(
            BrowserSession.token_hash == hash_key(token),
            BrowserSession.revoked_at.is_(None),
            BrowserSession.expires_at > utcnow(),
        )
    )
    return Principal.of(row) if row else None


def end_session(session: Session, token: str) -> None:
    """Revoke a browser session: its cookie, and every copy of it, stops working at once."""
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.token_hash == hash_key(token), BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def authenticate_execution(session: Session, token: str) -> Principal | None:
    """The principal of a running execution's token, or None (not running, another attempt's
    token, or its submitting key deleted). It acts with that key's current role and scope; a
    run no key submitted gets its own agent only (it may read its history, call nothing), and
    a paid run nothing at all: its payer is a stranger, and the agent's history holds other
    payers' tasks."""
    row = session.execute(
        select(
            Execution.id, Execution.agent_name, Execution.api_key_id, ApiKey, Execution.triggered_by
        )
        .outerjoin(ApiKey, ApiKey.id == Execution.api_key_id)
        .where(
            Execution.token_hash == hash_key(token),
            Execution.status == ExecutionStatus.running.value,
        )
    ).one_or_none()
    if row is None:
        return None
    execution_id, agent, key_id, key, trigger = row
    if key_id is None:
        scope = () if trigger == Trigger.paid.value else (agent,)
        return Principal(f"execution:{execution_id}", "agent", scope, None, execution_id)
    if key is None:
        return None
    return replace(Principal.of(key), execution_id=execution_id)
