"""Read-only warehouse roles (migration 0004) and analyst logins (`create-analyst-login`).

- a login in `xero_elt_analyst` reads every table and view of schema `analytics`, including those the
  migrating login (as dbt does) creates after the migrations, and nothing of `app`, `raw_xero` or
  `staging`; it creates nothing anywhere;
- `xero_elt_kpi_reader` has USAGE on `analytics` and no table until one is granted to it (as dbt's
  grants config does for `analytics.kpi_monthly`);
- the downgrade takes this database's grants back and keeps the cluster-wide roles.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from oauth_testlib import LOG_SINK, SEEN_SECRETS

from oauth_service import migrations
from oauth_service.db import (
    ANALYST_ROLE,
    APP_ROLE,
    KPI_READER_ROLE,
    create_analyst_login,
    create_login,
    drop_app_login,
)
from oauth_service.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]

# Made by the migrating login (the owner, as dbt and the loader run) after the migrations.
WAREHOUSE = """
CREATE TABLE analytics.invoices (invoice_id text PRIMARY KEY, total numeric NOT NULL);
INSERT INTO analytics.invoices VALUES ('inv-1', 100), ('inv-2', 250);
CREATE VIEW analytics.invoice_totals AS SELECT sum(total) AS total FROM analytics.invoices;
CREATE SCHEMA IF NOT EXISTS raw_xero;
CREATE TABLE raw_xero.invoices (invoice_id text, total numeric);
INSERT INTO raw_xero.invoices VALUES ('inv-1', 100);
CREATE SCHEMA IF NOT EXISTS staging;
CREATE TABLE staging.stg_invoices (invoice_id text, total numeric);
INSERT INTO staging.stg_invoices VALUES ('inv-1', 100);
"""

REFUSED_READS = (
    "SELECT * FROM app.xero_connections",
    "SELECT id FROM app.audit_log",
    "SELECT * FROM app.oauth_states",
    "SELECT * FROM raw_xero.invoices",
    "SELECT * FROM staging.stg_invoices",
)

REFUSED_WRITES = (
    "CREATE TABLE analytics.analyst_scratch (i int)",
    "CREATE VIEW analytics.analyst_view AS SELECT 1 AS one",
    "CREATE TABLE public.analyst_scratch (i int)",
    "CREATE TABLE staging.analyst_scratch (i int)",
    "CREATE SCHEMA analyst_scratch",
    "INSERT INTO analytics.invoices VALUES ('inv-3', 1)",
    "UPDATE analytics.invoices SET total = 0",
    "DELETE FROM analytics.invoices",
    "TRUNCATE analytics.invoices",
    "DROP TABLE analytics.invoices",
    "GRANT SELECT ON raw_xero.invoices TO CURRENT_USER",
)


def _login_name() -> str:
    return f"xero_elt_test_analyst_{uuid.uuid4().hex[:10]}"


def _password(url: str) -> str:
    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    SEEN_SECRETS.add(password)
    return password


@pytest.fixture(scope="module")
def warehouse_url(create_database) -> str:
    """A database of its own, migrated, then given the tables dbt and the loader would make."""
    url = create_database("analyst")
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(WAREHOUSE)
    return url


@pytest.fixture
def analyst(warehouse_url):
    """(name, URL) of a new login made by create_analyst_login; dropped afterwards."""
    name = _login_name()
    url = create_analyst_login(warehouse_url, name)
    _password(url)
    yield name, url
    drop_app_login(warehouse_url, name)


def _assert_refused(conn: psycopg.Connection, statements) -> None:
    for statement in statements:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
            pytest.fail(f"{statement} succeeded")


def _assert_reads_analytics_only(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (name, name)
        assert conn.execute("SELECT invoice_id, total FROM analytics.invoices ORDER BY 1").fetchall() == [
            ("inv-1", 100),
            ("inv-2", 250),
        ]
        assert conn.execute("SELECT total FROM analytics.invoice_totals").fetchone() == (350,)
        _assert_refused(conn, REFUSED_READS)
        _assert_refused(conn, REFUSED_WRITES)
        # PostgreSQL only warns when a GRANT grants nothing: check it did grant nothing
        conn.execute("GRANT SELECT ON analytics.invoices TO PUBLIC")
        assert conn.execute(
            "SELECT has_table_privilege('public', 'analytics.invoices', 'SELECT')"
        ).fetchone() == (False,)


def test_an_analyst_login_reads_analytics_and_nothing_else(warehouse_url, analyst):
    name, url = analyst
    _assert_reads_analytics_only(url, name)
    # a table dbt builds later (same login as the migrations) is readable at once: default privileges
    with psycopg.connect(warehouse_url, autocommit=True) as owner:
        owner.execute("CREATE TABLE analytics.contacts AS SELECT 'c-1'::text AS contact_id")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT contact_id FROM analytics.contacts").fetchall() == [("c-1",)]
    finally:
        with psycopg.connect(warehouse_url, autocommit=True) as owner:
            owner.execute("DROP TABLE analytics.contacts")


def test_an_analyst_login_is_a_plain_member_of_the_analyst_role(warehouse_url, analyst):
    name, _ = analyst
    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        attrs = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            (name,),
        ).fetchone()
        assert attrs == (True, False, False, False, False, False)
        groups = conn.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
            (name,),
        ).fetchall()
        assert groups == [(ANALYST_ROLE,)]
        owned = "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = %s"
        assert conn.execute(owned, (name,)).fetchone() == (0,)


def test_the_group_roles_log_in_nowhere_and_create_nothing(warehouse_url):
    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        for role in (ANALYST_ROLE, KPI_READER_ROLE):
            attrs = conn.execute(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                "FROM pg_roles WHERE rolname = %s",
                (role,),
            ).fetchone()
            assert attrs == (False,) * 6, role
            may = conn.execute(
                "SELECT has_schema_privilege(%(r)s, 'analytics', 'USAGE'), "
                "has_schema_privilege(%(r)s, 'analytics', 'CREATE'), "
                "has_schema_privilege(%(r)s, 'public', 'CREATE'), "
                "has_schema_privilege(%(r)s, 'app', 'USAGE'), "
                "has_schema_privilege(%(r)s, 'raw_xero', 'USAGE'), "
                "has_schema_privilege(%(r)s, 'staging', 'USAGE'), "
                "has_database_privilege(%(r)s, current_database(), 'CREATE')",
                {"r": role},
            ).fetchone()
            assert may == (True, False, False, False, False, False, False), role


def test_the_kpi_reader_role_reads_only_what_is_granted_to_it(warehouse_url):
    """USAGE on analytics but no table: dbt grants it SELECT on analytics.kpi_monthly (simulated here)."""
    with psycopg.connect(warehouse_url, autocommit=True) as owner:
        assert owner.execute(
            "SELECT has_table_privilege(%(r)s, 'analytics.invoices', 'SELECT'), "
            "has_table_privilege(%(r)s, 'analytics.invoice_totals', 'SELECT')",
            {"r": KPI_READER_ROLE},
        ).fetchone() == (False, False)
        owner.execute(
            "CREATE TABLE analytics.kpi_monthly AS SELECT date '2026-05-01' AS month, 350 AS revenue"
        )
        owner.execute(f"GRANT SELECT ON analytics.kpi_monthly TO {KPI_READER_ROLE}")
    name = _login_name()
    url = create_login(warehouse_url, name, member_of=KPI_READER_ROLE)
    _password(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT revenue FROM analytics.kpi_monthly").fetchall() == [(350,)]
            _assert_refused(
                conn,
                (
                    "SELECT * FROM analytics.invoices",
                    "SELECT * FROM analytics.invoice_totals",
                    *REFUSED_READS,
                    "CREATE TABLE analytics.kpi_scratch (i int)",
                    "CREATE TABLE public.kpi_scratch (i int)",
                ),
            )
    finally:
        drop_app_login(warehouse_url, name)
        with psycopg.connect(warehouse_url, autocommit=True) as owner:
            owner.execute("DROP TABLE analytics.kpi_monthly")


def test_create_analyst_login_command(warehouse_url):
    """As an operator runs it: the URL on stdout, once, and nothing secret anywhere else."""
    name = _login_name()
    env = {k: v for k, v in os.environ.items() if k != "APP_DATABASE_URL"} | {"DATABASE_URL": warehouse_url}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "oauth_service", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        done = run("create-analyst-login", name)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ANALYST_DATABASE_URL=postgresql://"), done.stdout
        url = lines[0].split("=", 1)[1]
        password = _password(url)
        assert len(password) >= 32
        assert password not in done.stderr
        assert not any(password in line for line in LOG_SINK.lines)
        _assert_reads_analytics_only(url, name)

        again = run("create-analyst-login", name)  # exists already: refused, nothing printed
        assert again.returncode == 2 and "already exists" in again.stderr
        assert again.stdout == ""
        bad = run("create-analyst-login", "Robert'); DROP TABLE x;--")
        assert bad.returncode == 2 and bad.stdout == ""
        no_db = subprocess.run(
            [sys.executable, "-m", "oauth_service", "create-analyst-login", _login_name()],
            env={k: v for k, v in env.items() if k != "DATABASE_URL"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert no_db.returncode == 2 and "DATABASE_URL is required" in no_db.stderr
    finally:
        drop_app_login(warehouse_url, name)
    with psycopg.connect(warehouse_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None


def test_logins_join_only_the_products_group_roles(warehouse_url):
    name = _login_name()
    for group in ("postgres", "pg_read_all_data", "pg_write_server_files", f"{APP_ROLE}_other"):
        with pytest.raises(SettingsError, match="may only be made a member"):
            create_login(warehouse_url, name, member_of=group)
    with psycopg.connect(warehouse_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
    for group in (APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE):
        with pytest.raises(SettingsError, match="never dropped"):
            drop_app_login(warehouse_url, group)


def _privileges(conn: psycopg.Connection) -> dict[str, object]:
    return {
        "analyst uses analytics": conn.execute(
            "SELECT has_schema_privilege(%s, 'analytics', 'USAGE')", (ANALYST_ROLE,)
        ).fetchone()[0],
        "kpi reader uses analytics": conn.execute(
            "SELECT has_schema_privilege(%s, 'analytics', 'USAGE')", (KPI_READER_ROLE,)
        ).fetchone()[0],
        "analyst reads the older table": conn.execute(
            "SELECT has_table_privilege(%s, 'analytics.older', 'SELECT')", (ANALYST_ROLE,)
        ).fetchone()[0],
        "default privileges": conn.execute(
            "SELECT count(*) FROM pg_default_acl WHERE defaclnamespace = 'analytics'::regnamespace "
            "AND defaclrole = to_regrole(current_user)"  # 0006 adds the pipeline role's own
        ).fetchone()[0],
    }


def test_0004_grants_existing_tables_and_its_downgrade_takes_the_grants_back(create_database):
    url = create_database("mig4")
    migrations.upgrade(url, "0003_owner_may_set_app_role")
    with psycopg.connect(url, autocommit=True) as conn:  # dbt ran before the migration existed
        conn.execute("CREATE SCHEMA analytics")
        conn.execute("CREATE TABLE analytics.older AS SELECT 1 AS one")
    migrations.upgrade(url, "0004_analyst_roles")
    assert migrations.current(url) == "0004_analyst_roles"
    granted = {
        "analyst uses analytics": True,
        "kpi reader uses analytics": True,
        "analyst reads the older table": True,
        "default privileges": 1,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        assert _privileges(conn) == granted

    migrations.downgrade(url, "0003_owner_may_set_app_role")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _privileges(conn) == dict.fromkeys(granted, False) | {"default privileges": 0}
        # the roles are cluster-wide: kept, other databases grant to them too
        roles = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
            ([ANALYST_ROLE, KPI_READER_ROLE],),
        ).fetchall()
        assert roles == [(ANALYST_ROLE,), (KPI_READER_ROLE,)]
        # and the schema, which holds dbt's models
        assert conn.execute("SELECT to_regclass('analytics.older') IS NOT NULL").fetchone() == (True,)

    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _privileges(conn) == granted
    migrations.downgrade(url)  # to base, 0004 included
    assert migrations.current(url) is None
