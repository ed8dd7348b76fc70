"""A running platform for benchmarks: a fresh database, the sandbox, the OAuth service with every
sandbox tenant connected through the real flow, and a Dagster instance on PostgreSQL.

    with bench_platform(tenants=100, invoices=200) as (sandbox, instance):
        sync_tenants(instance=instance)

On TEST_DATABASE_URL's server if set, else the embedded one; the database is dropped at the end.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from psycopg import sql

from oauth_service.db import create_app_login, drop_app_login
from oauth_service.migrations import upgrade
from oauth_service.server import ServiceServer
from oauth_service.settings import Settings, generate_key
from orchestration.demo import connect_organisations, user_jwt
from orchestration.net import free_loopback_port
from orchestration.settings import DatabaseUrl, local_dir, prepare_environment
from xero_sandbox import SandboxConfig, SandboxServer

JWT_SECRET = "bench-jwt-secret-" + "y" * 32


def _server() -> DatabaseUrl:
    if os.environ.get("TEST_DATABASE_URL"):
        return DatabaseUrl.parse(os.environ["TEST_DATABASE_URL"])
    from orchestration.local_postgres import LocalPostgres

    return DatabaseUrl(LocalPostgres(local_dir()).ensure_running())


def _create(server: DatabaseUrl, name: str) -> DatabaseUrl:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server.with_database(name)


def _drop(server: DatabaseUrl, name: str) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def bench_platform(*, tenants: int, invoices: int, seed: int = 5, rate_limits: bool = True
                   ) -> Iterator[tuple[SandboxServer, dg.DagsterInstance]]:
    server = _server()
    name = f"xero_elt_bench_{uuid.uuid4().hex[:8]}"
    db, dagster_db = _create(server, name), _create(server, f"{name}_dagster")
    app_role = f"xero_elt_bench_{uuid.uuid4().hex[:8]}"
    try:
        upgrade(db.url)
        app_database_url = create_app_login(db.url, app_role)  # the service's and vault's own login
        cfg = SandboxConfig(seed=seed, tenants=tenants, invoices_per_tenant=invoices, rate_limits=rate_limits)
        with SandboxServer(cfg, host="127.0.0.1", port=0) as sandbox, tempfile.TemporaryDirectory() as home:
            port = free_loopback_port()
            os.environ.update({
                **sandbox.env(), **db.dbt_env(), "DATABASE_URL": db.url, "APP_DATABASE_URL": app_database_url,
                "DAGSTER_POSTGRES_URL": dagster_db.url,
                "XERO_REDIRECT_URI": f"http://127.0.0.1:{port}/xero/auth/callback",
                "AUTH_JWT_SECRET": JWT_SECRET, "TOKEN_ENCRYPTION_KEY": generate_key(),
                "APP_RETURN_URL": "http://localhost:3000/x", "APP_ORIGIN": "http://localhost:3000",
                "DAGSTER_HOME": home, "DLT_DATA_DIR": os.path.join(home, "dlt"),
            })
            prepare_environment()
            with ServiceServer(Settings.from_env(), host="127.0.0.1", port=port) as service:
                connect_organisations(service.url, user_jwt(JWT_SECRET, str(uuid.uuid4())))
                with dg.DagsterInstance.get() as instance:
                    yield sandbox, instance
    finally:
        from orchestration.resources import _vault

        _vault.cache_clear()
        drop_app_login(server.url, app_role)
        _drop(server, name)
        _drop(server, f"{name}_dagster")
