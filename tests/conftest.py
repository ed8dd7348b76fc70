"""Shared fixtures: a real PostgreSQL database per test run, and the sandbox fixtures.

`TEST_DATABASE_URL` (e.g. CI's PostgreSQL 15) names the server; without it the embedded
PostgreSQL under `.local/` is started. Each test run creates its own database and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orchestration.settings import TELEMETRY_OFF, DatabaseUrl, local_dir
from tests import secret_watch

pytest_plugins = ["xero_sandbox.pytest_plugin"]


REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    secret_watch.start()  # from the first test on: see no_token_in_clear_anywhere_in_the_run


# The longest test files, longest first: with two workers taking a file at a time, starting them
# early keeps one worker from running the longest file alone at the end. The rest keep their order.
LONGEST_FIRST = ("test_end_to_end.py", "test_canonical_invoices.py", "test_crash_recovery.py",
                 "test_demo.py", "test_ui.py", "test_daemon_recovery.py", "test_kpis.py",
                 "test_incremental.py", "test_faults_end_to_end.py", "test_source_resume.py",
                 "test_source_pacing.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture(scope="session", autouse=True)
def dlt_data_dir(tmp_path_factory) -> Path:
    """dlt's working folders (one per tenant pipeline) of this session's own: two test files run at
    once (pytest-xdist) may have tenants with the same ids, and their pipelines the same names."""
    path = tmp_path_factory.mktemp("dlt")
    os.environ["DLT_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def no_token_in_clear_anywhere_in_the_run(tmp_path_factory) -> Iterator[None]:
    """After the session's last test (each worker's, with pytest-xdist): no token any sandbox issued
    appears in clear in any log record, command output, Dagster event log or file the run left
    behind. A leak fails the run (an error in this fixture's teardown).

    tests/oauth_service/ checks more secrets (client secret, PKCE verifiers, database passwords) in
    more depth (DEBUG logs, every app table) for the service alone; this one spans every test."""
    yield
    leaks = secret_watch.leaks(tmp_path_factory.getbasetemp(), REPO / "dbt_project" / "logs",
                               REPO / "dbt_project" / "target")
    assert leaks == [], f"tokens in clear: {leaks[:20]}"

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
