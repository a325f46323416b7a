"""API keys: random bearer tokens stored as SHA-256 hashes, admin or scoped to agents.

A browser signs in with a key and gets a session: a random token of its own (kept as a
SHA-256 hash, like keys) that acts with its key's current role and scope until it is
signed out, expires or its key is deleted.

Every agent run gets an execution token (`AGX_EXECUTION_TOKEN`): random, kept as a SHA-256
hash on its execution row, valid only while that attempt runs. It acts with the submitting
key's current role and scope; a run no key submitted (a schedule's, a paid one) gets a
token scoped to its own agent only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.models import ApiKey

KEY_PREFIX = "agx_"
#: Execution tokens look different from keys, so a presented token is looked up once.
EXECUTION_TOKEN_PREFIX = "agxe_"
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
    key_id: str | None = None  #: the stored key's id (executions record who submitted them)
    #: set when an execution token authenticated the call: the running execution calling
    execution_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins see and manage everything."""
        return self.role == "admin"

    @classmethod
    def of(cls, row: ApiKey) -> Principal:
        """The principal of a stored key."""
        return cls(row.name, row.role, tuple(row.agents or ()), row.id)

    def may_see(self, agent: str) -> bool:
        """True when this caller may see or use the agent."""
        return self.is_admin or agent in self.agents


def new_execution_token() -> str:
    """A fresh random execution token (its hash goes on the row, the token to the agent)."""
    return EXECUTION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def csrf_token(session_token: str) -> str:
    """The CSRF token bound to a browser session (derived, so it need not be stored)."""
    digest = hmac.new(session_token.encode(), b"agx-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class KeyCache:
    """Principals of API keys recently authenticated, for `seconds` each, so a busy client
    costs no database round trip per request. A deleted key (or a changed scope) takes
    effect within `seconds`: the documented bound (AGX_KEY_CACHE_SECONDS; 0 turns it off).
    Only keys that authenticated are kept (an unknown key is looked up every time, and cannot
    fill the cache), and at most `size` of them."""

    def __init__(self, seconds: float, size: int = 10_000):
        self.seconds, self.size = seconds, size
        self._found: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Principal | None:
        """The cached principal of this key, if it was authenticated less than `seconds` ago."""
        entry = self._found.get(hash_key(key))
        return entry[1] if entry is not None and entry[0] > now else None

    def put(self, key: str, found: Principal, now: float) -> None:
        """Remember a key that authenticated."""
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._found) >= self.size:
                self._found = {h: e for h, e in self._found.items() if e[0] > now}
                if len(self._found) >= self.size:
                    self._found.clear()
            self._found[hash_key(key)] = (now + self.seconds, found)
