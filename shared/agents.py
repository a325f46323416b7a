"""Agent definitions: the validated spec and idempotent upsert used by the API and the CLI."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from shared.errors import InvalidField
from shared.models import (
    DEFAULT_MAX_PARALLEL_TASKS,
    DEFAULT_QUEUE_LIMIT,
    DEFAULT_TIMEOUT_SECONDS,
    Agent,
)
from shared.states import AgentOutput
from shared.store import agents as agent_store

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
#: A model name: safe characters only, since it becomes an argv item.
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._:/\[\]-]{0,127}"
MODEL_PATTERN = re.compile(MODEL_NAME)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_PRICE = Decimal("1e12")  #: prices are stored as NUMERIC(18, 6): below a trillion USD
Arg = Annotated[str, Field(min_length=1, max_length=4096)]
#: Fields an agent spec may set besides its name.
AGENT_FIELDS = (
    "command",
    "output",
    "default_model",
    "max_parallel_tasks",
    "timeout_seconds",
    "queue_limit",
    "workdir",
    "env",
    "price",
    "description",
    "mcp",
)

REQUIRED_FIELDS = (
    "command",
    "output",
    "max_parallel_tasks",
    "timeout_seconds",
    "queue_limit",
    "env",
    "mcp",
)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class AgentPatch(BaseModel):
    """Fields that can change on an existing agent; all optional."""

    model_config = ConfigDict(extra="forbid")

    command: list[Arg] | None = Field(None, min_length=1, max_length=256)
    output: AgentOutput | None = None
    default_model: str | None = Field(None, pattern=f"^{MODEL_NAME}$")
    max_parallel_tasks: int | None = Field(None, ge=1, le=1000)
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    queue_limit: int | None = Field(None, ge=0, le=1_000_000)
    workdir: str | None = Field(None, min_length=1, max_length=4096)
    env: dict[str, str] | None = None
    price: Decimal | None = Field(None, ge=0, lt=MAX_PRICE, description="USD per paid task")
    description: str | None = Field(None, max_length=10_000)
    mcp: bool | None = Field(None, description="give its runs agx as an MCP server")

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_no_nul(v) for v in value]

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, item in (value or {}).items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"'{name[:40]}' is not a valid environment variable name")
            _no_nul(item)
        return value


class AgentSpec(AgentPatch):
    """A whole agent definition, as POSTed or listed in agents.yaml."""

    name: str = Field(pattern=SLUG)
    command: list[Arg] = Field(min_length=1, max_length=256)  # type: ignore[assignment]
    output: AgentOutput = AgentOutput.claude_stream_json  # type: ignore[assignment]
    max_parallel_tasks: int = Field(DEFAULT_MAX_PARALLEL_TASKS, ge=1, le=1000)  # type: ignore[assignment]
    timeout_seconds: int = Field(DEFAULT_TIMEOUT_SECONDS, ge=1, le=7 * 24 * 3600)  # type: ignore[assignment]
    queue_limit: int = Field(DEFAULT_QUEUE_LIMIT, ge=0, le=1_000_000)  # type: ignore[assignment]
    env: dict[str, str] = Field(default_factory=dict)  # type: ignore[assignment]
    mcp: bool = False  # type: ignore[assignment]


def agent_values(spec: AgentPatch) -> dict[str, Any]:
    """The column values a spec or patch sets (only those given, for a patch)."""
    data = spec.model_dump(exclude_unset=not isinstance(spec, AgentSpec), exclude={"name"})
    for key in REQUIRED_FIELDS:
        if key in data and data[key] is None:
            raise InvalidField(key, "must not be null")
    return {k: v for k, v in data.items() if k in AGENT_FIELDS}


def upsert_agent(session: Session, spec: AgentSpec) -> str:
    """Create or update an agent from a full spec; returns 'created', 'updated' or 'unchanged'."""
    values = agent_values(spec)
    agent = agent_store.get(session, spec.name, "update")
    if agent is None:
        session.add(Agent(name=spec.name, **values))
        return "created"
    changed = {k: v for k, v in values.items() if getattr(agent, k) != v}
    for key, value in changed.items():
        setattr(agent, key, value)
    return "updated" if changed else "unchanged"
