"""Shared fixtures: a real PostgreSQL database per test run, and the sandbox fixtures.

`TEST_DATABASE_URL` (e.g. CI's PostgreSQL 15) names the server; without it the embedded
PostgreSQL under `.local/` is started. Each test run creates its own database and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from orchestration.settings import TELEMETRY_OFF, DatabaseUrl, local_dir
from tests import secret_watch

pytest_plugins = ["xero_sandbox.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    secret_watch.start()  # from the first test on: see tests/test_zz_no_token_in_clear.py

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def postgres_server() -> DatabaseUrl:
    """The server tests create their databases on (its maintenance database)."""
    if os.environ.get("TEST_DATABASE_URL"):
        return DatabaseUrl.parse(os.environ["TEST_DATABASE_URL"], "TEST_DATABASE_URL")
    from orchestration.local_postgres import LocalPostgres

    return DatabaseUrl(LocalPostgres(local_dir()).ensure_running())


@pytest.fixture(scope="session")
def create_database(postgres_server: DatabaseUrl) -> Iterator[Callable[[str], str]]:
    """Factory: a new empty database on the test server, dropped when the session ends."""
    created: list[str] = []

    def create(purpose: str = "t") -> str:
        name = f"xero_elt_test_{purpose}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return postgres_server.with_database(name).url

    yield create
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url(create_database: Callable[[str], str]) -> str:
    """One fresh, empty database for this test run."""
    return create_database("run")


@pytest.fixture(scope="session")
def migrated_database_url(create_database: Callable[[str], str]) -> str:
    """A fresh database with the app-schema migrations applied."""
    from oauth_service.migrations import upgrade

    url = create_database("app")
    upgrade(url)
    return url
