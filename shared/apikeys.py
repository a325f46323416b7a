"""API keys: random bearer tokens stored as SHA-256 hashes, admin or scoped to agents.

A browser signs in with a key and gets a session: a random token of its own (kept as a
SHA-256 hash, like keys) that acts with its key's current role and scope until it is
signed out, expires or its key is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from shared.models import ApiKey, BrowserSession, utcnow

KEY_PREFIX = "agx_"
#: Key names appear in every execution a key submits (`source`): short and plain.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
KEY_NAME_RULE = "use 1-64 letters, digits, '.', '_', '@' or '-'"


def hash_key(key: str) -> str:
    """SHA-256 hex of a key (keys are long random tokens, so a fast hash is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, role and the agents it may see."""

    name: str
    role: str
    agents: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """Admins see and manage everything."""
        return self.role == "admin"

    def may_see(self, agent: str) -> bool:
        """True when this caller may see or use the agent."""
        return self.is_admin or agent in self.agents


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
    return _principal(row) if row else None


def _principal(row: ApiKey) -> Principal:
    return Principal(row.name, row.role, tuple(row.agents or ()))


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
    return token, _principal(row)


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
    return _principal(row) if row else None


def end_session(session: Session, token: str) -> None:
    """Revoke a browser session: its cookie, and every copy of it, stops working at once."""
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.token_hash == hash_key(token), BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def csrf_token(session_token: str) -> str:
    """The CSRF token bound to a browser session (derived, so it need not be stored)."""
    digest = hmac.new(session_token.encode(), b"agx-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
