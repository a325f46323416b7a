"""Process settings, read once from the environment (and an optional `.env`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import load_dotenv

#: Default queue that carries execution ids.
DEFAULT_QUEUE = "agx.executions"
#: Test-only switch, read once by from_env: when 1, a cron may carry a leading seconds field.
TEST_SECONDS_ENV = "AGX_SCHEDULER_TEST_SECONDS"
#: Host names /mcp answers to by default: this machine only, on any port.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: The network paid tasks are paid on unless AGX_X402_NETWORK says otherwise (Base Sepolia).
DEFAULT_X402_NETWORK = "eip155:84532"


def normalize_database_url(url: str) -> str:
    """Accept postgresql://, postgres:// and postgresql+psycopg:// and return the psycopg form."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"AGX_DATABASE_URL must be a PostgreSQL URL, got {url.split('://')[0]}://")


def _comma_list(raw: str) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma-separated setting."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _positive_int(name: str, raw: str) -> int:
    """A whole number of at least 1 from the environment, or a clear startup error."""
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to find its services and tune its behaviour."""

    database_url: str | None = None
    redis_url: str | None = None
    broker_url: str | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".agx")
    api_key: str | None = None
    queue: str = DEFAULT_QUEUE
    lease_seconds: float = 30.0  #: a slot lease lapses after this long without renewal
    heartbeat_seconds: float = 5.0  #: how often a running worker renews its lease
    redispatch_after_seconds: float = 15.0  #: pending and unclaimed this long -> re-sent
    lease_buffer_seconds: float = 300.0  #: hard lease cap is timeout + this
    wait_max_seconds: float = 300.0  #: longest `wait: true` on POST .../task
    keepalive_seconds: float = 15.0  #: idle time before an SSE/websocket keepalive
    #: after SIGTERM, how long a worker pool lets running agents finish before stopping them
    drain_seconds: float = 300.0
    allowed_origins: tuple[str, ...] = ()
    secret_key: str | None = None  #: signs session cookies; share it across API processes
    metrics_token: str | None = None  #: when set, /metrics wants it as a bearer token
    #: how long an API process trusts a key it authenticated (a deleted key works this long)
    key_cache_seconds: float = 5.0
    #: open SSE + websocket streams one API key may hold in one API process (then 429)
    max_streams_per_key: int = 8
    #: open streams in one API process, all keys together (then 503); keep it below the
    #: process's threads (32) so that short requests and /healthz always find one
    max_streams: int = 24
    #: test-only: crons may carry a leading seconds field (AGX_SCHEDULER_TEST_SECONDS=1)
    cron_seconds: bool = False
    #: Host header values /mcp answers to (a name without a port allows any port; `*`: any)
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    #: nested agent-to-agent calls allowed below the first run of a chain
    mcp_max_depth: int = 3
    #: the API's base URL (no /api) as agents reach it: their AGX_API_URL
    api_url: str = "http://127.0.0.1:8000"
    #: paid tasks (x402): the address paid, the CAIP-2 network, the token (None: the SDK's USDC
    #: for the network) and the facilitator; paid tasks are off without pay_to and facilitator
    x402_pay_to: str | None = None
    x402_network: str = DEFAULT_X402_NETWORK
    x402_asset: str | None = None
    x402_facilitator_url: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from environment variables (AGX_*)."""
        if env is None:
            load_dotenv(override=False)
            env = dict(os.environ)
        db = env.get("AGX_DATABASE_URL") or None
        origins = tuple(
            o.strip() for o in env.get("AGX_ALLOWED_ORIGINS", "").split(",") if o.strip()
        )
        settings = cls(
            database_url=normalize_database_url(db) if db else None,
            redis_url=env.get("AGX_REDIS_URL") or None,
            broker_url=env.get("AGX_BROKER_URL") or None,
            home=Path(env["AGX_HOME"]).expanduser()
            if env.get("AGX_HOME")
            else Path.home() / ".agx",
            api_key=env.get("AGX_API_KEY") or None,
            queue=env.get("AGX_QUEUE") or DEFAULT_QUEUE,
            allowed_origins=origins,
            secret_key=env.get("AGX_SECRET_KEY") or None,
            metrics_token=env.get("AGX_METRICS_TOKEN") or None,
            cron_seconds=env.get(TEST_SECONDS_ENV, "") == "1",
            allowed_hosts=_comma_list(env.get("AGX_ALLOWED_HOSTS", "")) or DEFAULT_ALLOWED_HOSTS,
            api_url=(env.get("AGX_API_URL") or cls.api_url).rstrip("/"),
            x402_pay_to=env.get("AGX_X402_PAY_TO") or None,
            x402_network=env.get("AGX_X402_NETWORK") or DEFAULT_X402_NETWORK,
            x402_asset=env.get("AGX_X402_ASSET") or None,
            x402_facilitator_url=env.get("AGX_X402_FACILITATOR_URL") or None,
        )
        for name in (
            "lease_seconds",
            "heartbeat_seconds",
            "redispatch_after_seconds",
            "keepalive_seconds",
            "drain_seconds",
            "key_cache_seconds",
        ):
            raw = env.get("AGX_" + name.upper())
            if raw:
                settings = replace(settings, **{name: float(raw)})  # type: ignore[arg-type]
        for name in ("max_streams_per_key", "max_streams", "mcp_max_depth"):
            raw = env.get("AGX_" + name.upper())
            if raw:
                value = _positive_int("AGX_" + name.upper(), raw)
                settings = replace(settings, **{name: value})  # type: ignore[arg-type]
        return settings

    @property
    def effective_broker_url(self) -> str:
        """The broker URL: AGX_BROKER_URL, else Dramatiq's Redis broker on AGX_REDIS_URL."""
        url = self.broker_url or self.redis_url
        if not url:
            raise RuntimeError("no broker: set AGX_BROKER_URL or AGX_REDIS_URL (or use `agx up`)")
        return url

    def require(self) -> Settings:
        """Fail clearly when a production process is started without its services."""
        missing = [
            n
            for n, v in (("AGX_DATABASE_URL", self.database_url), ("AGX_REDIS_URL", self.redis_url))
            if not v
        ]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} not set (or run `agx up` for embedded services)"
            )
        return self
