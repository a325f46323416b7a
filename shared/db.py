"""Database engine, the one sessionmaker, and migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import normalize_database_url

_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(
    url: str, pool_size: int = 10, pre_ping: bool = True, autocommit: bool = False
) -> Engine:
    """Create an engine for a PostgreSQL URL in any accepted form.

    `autocommit` suits callers whose every write is one statement (the worker): no BEGIN and
    COMMIT round trips around each.
    """
    return create_engine(
        normalize_database_url(url),
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        future=True,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """The sessionmaker used at every edge (view, actor, scheduler job)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database schema to `revision`."""
    command.upgrade(alembic_config(url), revision)
