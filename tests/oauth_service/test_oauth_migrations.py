"""App-schema migrations up and down on a fresh database."""

from sqlalchemy import inspect, text

from oauth_service import migrations
from oauth_service.db import make_engine

TABLES = {"xero_connections", "audit_log", "oauth_states", "webhook_events"}


def test_upgrade_downgrade_upgrade(create_database):
    url = create_database("mig")
    assert migrations.current(url) is None
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
    migrations.upgrade(url)  # idempotent
    engine = make_engine(url, pool_size=1)
    try:
        insp = inspect(engine)
        assert TABLES | {"alembic_version"} <= set(insp.get_table_names(schema="app"))
        assert "alembic_version" not in insp.get_table_names(schema="public")
        cols = {c["name"]: c for c in insp.get_columns("xero_connections", schema="app")}
        for name in (
            "id",
            "user_id",
            "tenant_id",
            "access_token",
            "refresh_token",
            "token_expires_at",
            "connected_at",
            "last_sync",
            "created_at",
            "updated_at",
            "tenant_name",
            "status",
            "scopes",
            "xero_connection_id",
            "auth_event_id",
        ):
            assert name in cols, name
        assert str(cols["tenant_id"]["type"]) == "VARCHAR(255)"
        assert {ix["name"] for ix in insp.get_indexes("xero_connections", schema="app")} >= {
            "ix_xero_connections_user_id"
        }
        audit_cols = {c["name"] for c in insp.get_columns("audit_log", schema="app")}
        assert {
            "id",
            "user_id",
            "action",
            "table_accessed",
            "record_id",
            "metadata",
            "ip_address",
            "timestamp",
        } <= audit_cols
        assert {"ix_audit_log_user_id", "ix_audit_log_timestamp"} <= {
            ix["name"] for ix in insp.get_indexes("audit_log", schema="app")
        }
        with engine.connect() as conn:
            checks = (
                conn.execute(
                    text(
                        "SELECT conname FROM pg_constraint WHERE conrelid = 'app.xero_connections'::regclass "
                        "AND contype = 'c'"
                    )
                )
                .scalars()
                .all()
            )
        assert "xero_connections_status_check" in checks and "xero_connections_tokens_encrypted" in checks
    finally:
        engine.dispose()

    migrations.downgrade(url)
    assert migrations.current(url) is None
    engine = make_engine(url, pool_size=1)
    try:
        assert not TABLES & set(inspect(engine).get_table_names(schema="app"))
    finally:
        engine.dispose()
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()


def test_clear_tokens_are_refused_by_the_database(migrated_database_url):
    import uuid

    import pytest
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(migrated_database_url, pool_size=1)
    try:
        with pytest.raises(IntegrityError, match="tokens_encrypted"), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO app.xero_connections (user_id, tenant_id, access_token) "
                    "VALUES (:u, :t, 'clear')"
                ),
                {"u": str(uuid.uuid4()), "t": str(uuid.uuid4())},
            )
        with pytest.raises(IntegrityError, match="status_check"), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO app.xero_connections (user_id, tenant_id, status) VALUES (:u, :t, 'weird')"
                ),
                {"u": str(uuid.uuid4()), "t": str(uuid.uuid4())},
            )
    finally:
        engine.dispose()


def test_0002_narrows_the_application_role_and_its_downgrade_restores_it(create_database):
    url = create_database("mig2")
    engine = make_engine(url, pool_size=1)

    def app_role_may() -> dict[str, bool]:
        checks = {
            "delete connections": "has_table_privilege(:r, 'app.xero_connections', 'DELETE')",
            "delete webhook events": "has_table_privilege(:r, 'app.webhook_events', 'DELETE')",
            "delete oauth states": "has_table_privilege(:r, 'app.oauth_states', 'DELETE')",
            "read audit metadata": "has_column_privilege(:r, 'app.audit_log', 'metadata', 'SELECT')",
            "read audit ids": "has_column_privilege(:r, 'app.audit_log', 'id', 'SELECT')",
        }
        with engine.connect() as conn:
            return {
                name: conn.execute(text("SELECT " + check), {"r": "xero_elt_app"}).scalar_one()
                for name, check in checks.items()
            }

    try:
        migrations.upgrade(url, "0001_app_schema")
        broad = app_role_may()
        assert all(broad.values()), broad
        migrations.upgrade(url, "0002_narrow_app_role")
        assert migrations.current(url) == "0002_narrow_app_role"
        assert app_role_may() == {
            "delete connections": False,
            "delete webhook events": False,
            "delete oauth states": True,
            "read audit metadata": False,
            "read audit ids": True,
        }
        migrations.downgrade(url, "0001_app_schema")
        assert app_role_may() == broad
    finally:
        engine.dispose()
