"""App-schema migrations (Alembic), configured programmatically: no alembic.ini is needed.

    from oauth_service.migrations import upgrade, downgrade, current
    upgrade("postgresql://…")            # to head
    downgrade("postgresql://…")          # to base (drops the app tables)
    current("postgresql://…")            # the applied revision, or None

Alembic's version table lives in schema `app` (`app.alembic_version`).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from oauth_service.db import make_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent
SCHEMA = "app"
VERSION_TABLE = "alembic_version"


def _config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("version_table_schema", SCHEMA)
    cfg.attributes["connection"] = connection
    return cfg


def _run(database_url: str, fn, revision: str) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as connection:
            # Serialise concurrent upgrades (demo, tests, several containers starting at once).
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('oauth_service.migrations'))"))
            fn(_config(connection), revision)
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the app-schema migrations up to `revision` (default: head)."""
    _run(database_url, command.upgrade, revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert the app-schema migrations down to `revision` (default: base, i.e. drop everything)."""
    _run(database_url, command.downgrade, revision)


def current(database_url: str) -> str | None:
    """The applied revision, or None when the app schema was never migrated."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE, schema=SCHEMA):
                return None
            ctx = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
            return ctx.get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    return ScriptDirectory.from_config(cfg).get_current_head()
