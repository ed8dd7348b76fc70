"""Fixtures for the pipeline: a sandbox, the OAuth service, connected tenants, a Dagster instance."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from oauth_service.db import create_app_login, drop_app_login
from oauth_service.migrations import upgrade
from oauth_service.server import ServiceServer
from oauth_service.settings import Settings, generate_key
from orchestration.demo import connect_organisations, user_jwt
from orchestration.net import free_loopback_port
from orchestration.settings import DatabaseUrl, prepare_environment
from tests import secret_watch
from xero_sandbox import SandboxConfig, SandboxServer

USER_ID = "3f0a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
JWT_SECRET = "test-jwt-secret-" + "x" * 32
WEBHOOK_KEY = "test-webhook-key-" + "w" * 40


@dataclass
class Platform:
    """Everything a sync needs, running: database, sandbox, OAuth service, Dagster instance."""

    database_url: str
    sandbox: SandboxServer
    service_url: str
    instance: dg.DagsterInstance

    @property
    def tenant_ids(self) -> list[str]:
        return [t.tenant_id for t in self.sandbox.tenants]


def platform_env(database_url: str, sandbox: SandboxServer, service_port: int) -> dict[str, str]:
    return {
        **sandbox.env(),
        **DatabaseUrl.parse(database_url).dbt_env(),
        "DATABASE_URL": database_url,
        "XERO_REDIRECT_URI": f"http://127.0.0.1:{service_port}/xero/auth/callback",
        "AUTH_JWT_SECRET": JWT_SECRET,
        "TOKEN_ENCRYPTION_KEY": generate_key(),
        "APP_RETURN_URL": "http://localhost:3000/settings/xero",
        "APP_ORIGIN": "http://localhost:3000",
        "DEMO_MODE": "0",
        "XERO_WEBHOOK_KEY": WEBHOOK_KEY,
    }


def in_a_zone_west_of_utc(database_url: str) -> None:
    """Every session on the warehouse (dlt, dbt, the service, ours) in a time zone west of UTC, as
    a server whose default zone is not UTC would have them: a date cast that depends on the
    session's zone shows up as a day lost. (Dagster's storage pins its own sessions to UTC.)"""
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'America/Los_Angeles'").format(
            sql.Identifier(name)))


@pytest.fixture(scope="module")
def platform_factory(create_database: Callable[[str], str], tmp_path_factory
                     ) -> Iterator[Callable[..., Platform]]:
    """Start a connected platform: fresh database, sandbox, service, both tenants connected."""
    stack: list = []

    def start(**sandbox_options) -> Platform:
        database_url = create_database("pipe")
        in_a_zone_west_of_utc(database_url)
        upgrade(database_url)
        # The service and the vault (and so the run audit) use a least-privilege login, as in
        # production; dlt and dbt write raw and analytics as the owner.
        app_role = f"xero_elt_test_{uuid.uuid4().hex[:10]}"
        app_database_url = create_app_login(database_url, app_role)
        stack.append(lambda: _drop_role(database_url, app_role))
        options = {"seed": 11, "tenants": 2, "invoices_per_tenant": 150, **sandbox_options}
        sandbox = SandboxServer(SandboxConfig(**options))
        sandbox.__enter__()
        stack.append(sandbox)
        port = free_loopback_port()
        mp = pytest.MonkeyPatch()
        stack.append(mp)
        for key, value in platform_env(database_url, sandbox, port).items():
            mp.setenv(key, value)
        mp.setenv("APP_DATABASE_URL", app_database_url)
        service = ServiceServer(Settings.from_env(), host="127.0.0.1", port=port)
        service.__enter__()
        stack.append(service)
        assert connect_organisations(service.url, user_jwt(JWT_SECRET, USER_ID)) == options["tenants"]
        # Dagster's own storage on PostgreSQL, as deployed: concurrent runs need a real database.
        mp.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
        mp.setenv("DAGSTER_POSTGRES_URL", create_database("dagster"))
        prepare_environment()
        instance = dg.DagsterInstance.get()
        stack.append(lambda: _watch_event_logs(os.environ["DAGSTER_POSTGRES_URL"]))
        stack.append(instance.dispose)
        return Platform(database_url, sandbox, service.url, instance)

    yield start
    for item in reversed(stack):
        if isinstance(item, pytest.MonkeyPatch):
            item.undo()
        elif callable(item):
            item()
        else:
            item.__exit__(None, None, None)


def _watch_event_logs(dagster_url: str) -> None:
    """The runs' event logs (every line a run logged, as the UI shows it) go to the whole-run
    check that no token appears in clear."""
    with psycopg.connect(dagster_url.replace("+psycopg2", "")) as conn:
        secret_watch.record("\n".join(row[0] for row in conn.execute("SELECT event FROM event_logs")))


def _drop_role(database_url: str, name: str) -> None:
    from orchestration.resources import _vault

    _vault.cache_clear()  # its pooled connections use the role
    drop_app_login(database_url, name)
