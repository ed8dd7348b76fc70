"""Least privilege: the service and the vault run as a login that cannot touch the audit log's history.

- a dedicated login (APP_DATABASE_URL, made by `create-app-login`) cannot UPDATE/DELETE/TRUNCATE
  app.audit_log nor disable or drop its triggers, and the whole flow works with it;
- the HTTP service refuses to start without APP_DATABASE_URL (outside DEMO_MODE);
- without it the pipeline's vault runs `SET ROLE xero_elt_app` (defence in depth), one warning says to
  configure a dedicated login, and a missing role is refused rather than leaving the owner's rights.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from oauth_testlib import (
    LOG_SINK,
    SEEN_SECRETS,
    SEEN_TOKENS,
    WEBHOOK_KEY,
    Browser,
    api_get,
    audit_rows,
    expire_in_db,
    free_port,
)
from psycopg import sql
from sqlalchemy import text

from oauth_service import db, migrations
from oauth_service.__main__ import main as cli
from oauth_service.app import create_app
from oauth_service.audit import record_audit
from oauth_service.events import mark_webhook_events_processed, pending_webhook_events
from oauth_service.server import ServiceServer
from oauth_service.settings import Settings, SettingsError
from oauth_service.vault import TokenVault

TAMPERING = {
    "UPDATE app.audit_log SET action = 'nothing to see'": "permission denied",
    "DELETE FROM app.audit_log": "permission denied",
    "TRUNCATE app.audit_log": "permission denied",
    "ALTER TABLE app.audit_log DISABLE TRIGGER ALL": "must be owner",
    "ALTER TABLE app.audit_log DISABLE TRIGGER audit_log_no_update_delete": "must be owner",
    "DROP TRIGGER audit_log_no_truncate ON app.audit_log": "must be owner",
    "DROP TABLE app.audit_log": "must be owner",
}


@pytest.fixture(scope="module")
def app_login(app_database_url):
    """(name, APP_DATABASE_URL) of the session's dedicated login (made by create_app_login)."""
    return psycopg.conninfo.conninfo_to_dict(app_database_url)["user"], app_database_url


def _assert_cannot_tamper(conn, *, dedicated: bool = True) -> None:
    checks = {**TAMPERING, "SET ROLE postgres": "permission denied"} if dedicated else TAMPERING
    for statement, expected in checks.items():
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=expected):
            conn.execute(statement)
            pytest.fail(f"{statement} succeeded")
    # a GRANT by a non-owner grants nothing (PostgreSQL only warns)
    conn.execute("GRANT UPDATE, DELETE, TRUNCATE ON app.audit_log TO PUBLIC")
    assert conn.execute(
        "SELECT has_table_privilege('public', 'app.audit_log', 'UPDATE'), "
        "has_table_privilege(current_user, 'app.audit_log', 'UPDATE,DELETE,TRUNCATE,TRIGGER')"
    ).fetchone() == (False, False)


UNUSED = {
    "DELETE FROM app.xero_connections": "permission denied",
    "DELETE FROM app.webhook_events": "permission denied",
    "SELECT * FROM app.audit_log": "permission denied",
    "SELECT user_id FROM app.audit_log": "permission denied",
    "SELECT metadata FROM app.audit_log": "permission denied",
    "SELECT ip_address FROM app.audit_log": "permission denied",
    "SELECT tenant_id, timestamp FROM app.audit_log": "permission denied",
}


def test_dedicated_login_holds_only_the_privileges_the_code_uses(app_login):
    """No DELETE of connections or webhook events (only expired OAuth states are pruned), and of the
    audit log only what INSERT … RETURNING id and the once-per-run check need (migration 0002)."""
    _, url = app_login
    with psycopg.connect(url, autocommit=True) as conn:
        for statement, expected in UNUSED.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=expected):
                conn.execute(statement)
                pytest.fail(f"{statement} succeeded")
        conn.execute("DELETE FROM app.oauth_states WHERE expires_at < now() - interval '1 day'")
        action = f"least_privilege_probe_{uuid.uuid4().hex[:8]}"
        [row_id] = conn.execute(
            "INSERT INTO app.audit_log (action, record_id) VALUES (%s, 'r-1') RETURNING id", (action,)
        ).fetchone()
        assert conn.execute(
            "SELECT id FROM app.audit_log WHERE action = %s AND record_id = 'r-1'", (action,)
        ).fetchall() == [(row_id,)]


def test_dedicated_login_cannot_change_or_unprotect_the_audit_log(app_login, engine):
    name, url = app_login
    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    assert not any(password in line for line in LOG_SINK.lines)
    before = engine.connect().execute(text("SELECT count(*) FROM app.audit_log")).scalar_one()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (name, name)
        # it owns nothing, is no superuser, and holds exactly the app role's privileges
        owned = "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = %s"
        assert conn.execute(owned, (name,)).fetchone() == (0,)
        assert conn.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (
            False,
            False,
        )
        conn.execute("INSERT INTO app.audit_log (action) VALUES ('least_privilege_probe')")
        assert conn.execute("SELECT count(*) FROM app.audit_log").fetchone()[0] == before + 1
        _assert_cannot_tamper(conn)
    probe = audit_rows(engine, "least_privilege_probe")
    assert len(probe) == 1


def test_the_service_refuses_to_start_without_a_dedicated_login(settings, service_env):
    env = {k: v for k, v in service_env.items() if k != "APP_DATABASE_URL"}
    with pytest.raises(SettingsError, match="APP_DATABASE_URL is required") as err:
        Settings.from_env(env)
    assert "create-app-login" in str(err.value)
    with pytest.raises(SettingsError, match="APP_DATABASE_URL is required"):  # settings built by hand
        create_app(settings.replace(app_database_url=None))
    # the pipeline's vault may do without (it falls back to SET ROLE, tested below)
    assert Settings.from_env(env, for_service=False).app_database_url is None
    # as an operator starts it: exit status 2, the reason on stderr, nothing served
    clean = {k: v for k, v in os.environ.items() if k not in ("APP_DATABASE_URL", "DEMO_MODE")}
    served = subprocess.run(
        [sys.executable, "-m", "oauth_service", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2, served.stderr
    assert "APP_DATABASE_URL is required" in served.stderr and "create-app-login" in served.stderr


def test_the_vaults_fallback_refuses_owner_rights_when_the_app_role_is_missing(settings, monkeypatch):
    vault_settings = settings.replace(app_database_url=None)  # the pipeline's vault, no dedicated login
    monkeypatch.setattr(db, "APP_ROLE", f"xero_elt_app_missing_{uuid.uuid4().hex[:8]}")
    eng = db.app_engine(vault_settings, pool_size=1)
    try:
        with pytest.raises(SettingsError, match="would keep the rights of DATABASE_URL"):
            eng.connect()
    finally:
        eng.dispose()
    # the demo (its own local database) goes on with a warning
    eng = db.app_engine(vault_settings.replace(demo_mode=True), pool_size=1)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == "postgres"
    finally:
        eng.dispose()


def test_without_app_database_url_the_vaults_engine_sets_the_app_role(settings, engine, caplog, monkeypatch):
    settings = settings.replace(app_database_url=None)  # the pipeline's vault, no dedicated login
    monkeypatch.setattr(db, "_LEAST_PRIVILEGE_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="oauth_service.db"):
        engines = [db.app_engine(settings, pool_size=1), db.app_engine(settings, pool_size=1)]
    try:
        warnings = [r for r in caplog.records if "APP_DATABASE_URL" in r.getMessage()]
        assert len(warnings) == 1 and "create-app-login" in warnings[0].getMessage()
        for eng in engines:
            with eng.connect() as conn:
                users = conn.execute(text("SELECT current_user, session_user")).one()
                assert users == ("xero_elt_app", "postgres")
        raw = engines[0].raw_connection()
        try:
            raw.driver_connection.autocommit = True
            # (the session could still RESET ROLE: that is why APP_DATABASE_URL is the real fix)
            _assert_cannot_tamper(raw.driver_connection, dedicated=False)
            raw.driver_connection.autocommit = False
        finally:
            raw.close()
        # a connection back from the pool still runs as the app role
        with engines[0].connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == "xero_elt_app"
    finally:
        for eng in engines:
            eng.dispose()
    # migrations and operator commands keep the owner
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar_one() == "postgres"
    # demo mode: no warning
    monkeypatch.setattr(db, "_LEAST_PRIVILEGE_WARNED", False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oauth_service.db"):
        db.app_engine(settings.replace(demo_mode=True), pool_size=1).dispose()
    assert not [r for r in caplog.records if "APP_DATABASE_URL" in r.getMessage()]


def test_a_createrole_owner_that_is_no_superuser_may_use_the_vaults_fallback(
    postgres_server, migrated_database_url, service_env
):
    """The RDS master user's case: a CREATEROLE login that is no superuser owns the database and
    applies the migrations; xero_elt_app already exists in the cluster (roles are cluster-wide). The
    pipeline's vault (no APP_DATABASE_URL) then connects with DATABASE_URL and SET ROLE xero_elt_app,
    which migration 0003 makes possible."""
    owner = f"xero_elt_test_owner_{uuid.uuid4().hex[:8]}"
    database = f"xero_elt_test_owned_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(24)
    SEEN_SECRETS.add(password)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(owner), sql.Literal(db.scram_sha256_verifier(password))
            )
        )
        if conn.info.server_version >= 160000:
            # What PostgreSQL 16+ gives the creator of a role (createrole_self_grant unset): ADMIN, no SET.
            conn.execute(
                sql.SQL("GRANT xero_elt_app TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE").format(
                    sql.Identifier(owner)
                )
            )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner))
        )
    server = urlsplit(postgres_server.url)
    netloc = f"{owner}:{password}@{server.netloc.rpartition('@')[2]}"
    owner_url = urlunsplit(("postgresql", netloc, f"/{database}", server.query, ""))
    env = {k: v for k, v in service_env.items() if k != "APP_DATABASE_URL"} | {"DATABASE_URL": owner_url}
    vault_settings = Settings.from_env(env, for_service=False)
    try:
        migrations.upgrade(owner_url, "0002_narrow_app_role")
        eng = db.app_engine(vault_settings, pool_size=1)
        try:  # without 0003 the role cannot be assumed
            with pytest.raises(SettingsError, match="cannot be assumed"):
                eng.connect()
        finally:
            eng.dispose()
        migrations.upgrade(owner_url)
        with TokenVault(vault_settings, actor="tests-createrole-owner") as vault:
            with vault.engine.connect() as conn:
                users = conn.execute(text("SELECT current_user, session_user")).one()
            assert users == ("xero_elt_app", owner)
            assert vault.active_tenants() == []
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        db.drop_app_login(postgres_server.url, owner)


def test_app_database_url_naming_the_owner_is_refused(settings, migrated_database_url):
    eng = db.app_engine(settings.replace(app_database_url=migrated_database_url), pool_size=1)
    try:
        with pytest.raises(SettingsError, match="APP_DATABASE_URL"):
            eng.connect()
    finally:
        eng.dispose()


def test_create_app_login_command(migrated_database_url, monkeypatch, capsys):
    name = f"xero_elt_test_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DATABASE_URL", migrated_database_url)
    try:
        assert cli(["create-app-login", name]) == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith("APP_DATABASE_URL=postgresql://")
        url = out.split("=", 1)[1]
        password = psycopg.conninfo.conninfo_to_dict(url)["password"]
        SEEN_SECRETS.add(password)
        assert len(password) >= 32
        assert not any(password in line for line in LOG_SINK.lines)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (name,)
        assert cli(["create-app-login", name]) == 2  # exists already: refused, nothing printed
        assert cli(["create-app-login", "Robert'); DROP TABLE x;--"]) == 2
        assert capsys.readouterr().out == ""
    finally:
        db.drop_app_login(migrated_database_url, name)


def test_drop_app_login_ends_its_sessions_and_drops_it(migrated_database_url):
    name = f"xero_elt_test_{uuid.uuid4().hex[:10]}"
    url = db.create_app_login(migrated_database_url, name)
    SEEN_SECRETS.add(psycopg.conninfo.conninfo_to_dict(url)["password"])
    session = psycopg.connect(url, autocommit=True)
    try:
        db.drop_app_login(migrated_database_url, name)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")  # terminated
    finally:
        session.close()
    with psycopg.connect(migrated_database_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
    db.drop_app_login(migrated_database_url, name)  # already gone: nothing to do
    with pytest.raises(SettingsError, match="never dropped"):
        db.drop_app_login(migrated_database_url, db.APP_ROLE)


def _sign(body: bytes) -> str:
    return base64.b64encode(hmac.new(WEBHOOK_KEY.encode(), body, hashlib.sha256).digest()).decode()


def test_whole_flow_runs_as_the_dedicated_login(app_login, settings, sandbox, tenant_ids, engine):
    name, url = app_login
    app_settings = settings.replace(app_database_url=url, xero_redirect_uri=None)
    mine = sorted(tenant_ids[2:4])
    with ServiceServer(app_settings, port=free_port()) as srv:
        with srv.app.state.engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == name
        user = Browser(srv)
        try:
            assert user.connect(mine) == {"connected": ["2"]}
            assert {c["tenantId"] for c in user.connections()} == set(mine)

            # the pipeline's vault, on the same login: read, refresh (rotation stored), mark synced
            vault = TokenVault(app_settings, actor="tests-least-privilege", cache=False)
            try:
                with vault.engine.connect() as conn:
                    assert conn.execute(text("SELECT current_user")).scalar_one() == name
                first = vault.access_token_for(mine[0])
                expire_in_db(engine, mine[0])
                refreshed = vault.access_token_for(mine[0])
                SEEN_TOKENS.update((first, refreshed))
                assert refreshed != first
                assert api_get(sandbox, refreshed, mine[0]).status_code == 200
                vault.mark_synced(mine[0], datetime(2026, 5, 21, tzinfo=UTC))
                record_audit(vault.engine, "sync_run_succeeded", user_id="dagster", tenant_id=mine[0])

                # webhooks stored by the service, consumed through the vault's engine
                tenant = str(uuid.uuid4())
                event = {
                    "resourceId": str(uuid.uuid4()),
                    "tenantId": tenant,
                    "eventCategory": "INVOICE",
                    "eventType": "UPDATE",
                    "eventDateUtc": "2026-05-21T10:00:00",
                }
                body = json.dumps({"events": [event], "entropy": "x"}).encode()
                r = httpx.post(
                    f"{srv.url}/xero/webhooks", content=body, headers={"x-xero-signature": _sign(body)}
                )
                assert r.status_code == 200
                pending = pending_webhook_events(vault.engine, tenant)
                assert len(pending) == 1
                assert mark_webhook_events_processed(vault.engine, [e.id for e in pending]) == 1
            finally:
                vault.close()

            r = user.http.delete(f"{srv.url}/xero/connections/{mine[1]}", headers=user.auth)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "disconnected"
            statuses = {c["tenantId"]: c["status"] for c in user.connections()}
            assert statuses == {mine[0]: "active", mine[1]: "disconnected"}
        finally:
            user.close()
    assert audit_rows(engine, "token_refreshed", tenant_id=mine[0])
    assert audit_rows(engine, "xero_disconnected", tenant_id=mine[1])
    assert audit_rows(engine, "sync_run_succeeded", tenant_id=mine[0])
