"""API keys: random bearer tokens stored as SHA-256 hashes, admin or scoped to agents."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey

KEY_PREFIX = "agx_"


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
    return authenticate_hash(session, hash_key(key))


def authenticate_hash(session: Session, key_hash: str) -> Principal | None:
    """The principal for a key's hash (as kept in a signed session cookie), or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if row is None:
        return None
    return Principal(row.name, row.role, tuple(row.agents or ()))
