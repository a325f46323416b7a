"""Alembic environment: online migrations against the configured URL."""

from alembic import context
from sqlalchemy import create_engine, pool

from shared.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run migrations with a short-lived connection, holding an advisory lock."""
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Several processes may start at once (agx up, replicas): one migrates at a time.
        connection.exec_driver_sql("SELECT pg_advisory_lock(727274)")
        connection.commit()  # the lock is the session's; the migrations get their own transaction
        try:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.rollback()  # after a failed migration: lets the unlock run, keeps its error
            connection.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
            connection.commit()


run_migrations_online()
