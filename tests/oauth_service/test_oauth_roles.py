"""The four database roles, each through a real login, on a database migrated to head (issue "Deployment").

- `xero_elt_pipeline` (migration 0006): builds raw_xero, dlt's per-tenant staging schemas, staging and
  analytics as dlt, dbt and the orchestration do, and owns all of it (never its login); of `app` it reads
  xero_connections (id, tenant_id, tenant_name) and references its id, nothing more: no token column, no
  write, no DDL, no audit log, no trigger;
- `xero_elt_analyst` reads what the pipeline builds in analytics (default privileges), nothing else;
- `xero_elt_kpi_reader` reads analytics.kpi_monthly only;
- `xero_elt_app` (the service) keeps its own tables and touches none of the pipeline's.
Also: 0006 hands an existing deployment's objects to the pipeline role and its downgrade takes them back,
also when the migrating login is a CREATEROLE owner that is no superuser (the RDS master user).

test_oauth_least_privilege.py and test_oauth_analyst_role.py cover the service's and analysts' own
privileges in depth; what is here is where they meet the pipeline's objects.
"""

import contextlib
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from oauth_testlib import SEEN_SECRETS, administer_group_roles_as_their_creator
from psycopg import sql

from oauth_service import migrations
from oauth_service.db import (
    ANALYST_ROLE,
    APP_ROLE,
    KPI_READER_ROLE,
    PIPELINE_ROLE,
    create_login,
    drop_app_login,
    scram_sha256_verifier,
)
from oauth_service.settings import SettingsError

TENANT = "tenant-roles-1"  # the one connected tenant (written out in the statements below)
PIPELINE_SCHEMAS = ("raw_xero", "raw_xero_staging_t1", "staging", "analytics")

# What the pipeline does, in order, as dlt, dbt and the orchestration do it.
BUILD = (
    # dlt: its dataset, a staging dataset per tenant, merge through it, schema evolution
    "CREATE SCHEMA IF NOT EXISTS raw_xero",
    "CREATE SCHEMA IF NOT EXISTS raw_xero_staging_t1",
    "CREATE TABLE raw_xero._dlt_loads (load_id text NOT NULL, status bigint NOT NULL)",
    "CREATE TABLE raw_xero.invoices (invoice_id text NOT NULL, tenant_id text NOT NULL, total numeric, "
    "_dlt_load_id text NOT NULL)",
    "CREATE TABLE raw_xero_staging_t1.invoices (LIKE raw_xero.invoices)",
    "INSERT INTO raw_xero_staging_t1.invoices VALUES ('inv-1', 'tenant-roles-1', 100, 'load-1'), "
    "('inv-2', 'tenant-roles-1', 250, 'load-1')",
    "DELETE FROM raw_xero.invoices r USING raw_xero_staging_t1.invoices s WHERE r.invoice_id = s.invoice_id",
    "INSERT INTO raw_xero.invoices SELECT * FROM raw_xero_staging_t1.invoices",
    "UPDATE raw_xero.invoices SET total = total + 0",
    "TRUNCATE raw_xero_staging_t1.invoices",
    "INSERT INTO raw_xero._dlt_loads VALUES ('load-1', 0)",
    "ALTER TABLE raw_xero.invoices ADD COLUMN currency_code text",
    # the orchestration: Xero's app-wide minute (xero_budget.py)
    "CREATE TABLE IF NOT EXISTS raw_xero._xero_app_calls (at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS _xero_app_calls_at ON raw_xero._xero_app_calls (at)",
    # dbt's on-run-start: the batch table, indexes on dlt's tables
    "CREATE SCHEMA IF NOT EXISTS staging",
    "CREATE TABLE IF NOT EXISTS staging.dbt_load_batches (load_id text PRIMARY KEY, done_at timestamptz)",
    "CREATE INDEX IF NOT EXISTS invoices__dlt_load_id_idx ON raw_xero.invoices (_dlt_load_id)",
    # a staging model and a view, replaced
    "CREATE TABLE staging.stg_xero__invoices AS SELECT * FROM raw_xero.invoices",
    "CREATE OR REPLACE VIEW staging.stg_invoice_ids AS SELECT invoice_id FROM staging.stg_xero__invoices",
    "CREATE OR REPLACE VIEW staging.stg_invoice_ids AS "
    "SELECT invoice_id, tenant_id FROM staging.stg_xero__invoices",
    # the invoices mart with its foreign key (an enforced contract), swapped in as dbt builds a table
    "CREATE TABLE analytics.invoices__dbt_tmp (id uuid PRIMARY KEY, "
    "xero_connection_id uuid REFERENCES app.xero_connections (id), tenant_id text NOT NULL, amount numeric)",
    "INSERT INTO analytics.invoices__dbt_tmp SELECT md5(s.tenant_id || ':' || s.invoice_id)::uuid, c.id, "
    "s.tenant_id, s.total FROM staging.stg_xero__invoices s "
    "LEFT JOIN app.xero_connections c ON c.tenant_id = s.tenant_id",
    "CREATE TABLE analytics.invoices (id uuid)",  # the previous build's
    "ALTER TABLE analytics.invoices RENAME TO invoices__dbt_backup",
    "ALTER TABLE analytics.invoices__dbt_tmp RENAME TO invoices",
    "DROP TABLE analytics.invoices__dbt_backup",
    "CREATE INDEX IF NOT EXISTS idx_invoices_xero_connection_id ON analytics.invoices (xero_connection_id)",
    "GRANT SELECT ON analytics.invoices TO xero_elt_analyst",  # the model's grants config
    # an incremental run: a temporary table, delete+insert
    "CREATE TEMPORARY TABLE invoices__dbt_tmp_incremental AS SELECT * FROM analytics.invoices",
    "DELETE FROM analytics.invoices WHERE id IN (SELECT id FROM invoices__dbt_tmp_incremental)",
    "INSERT INTO analytics.invoices SELECT * FROM invoices__dbt_tmp_incremental",
    "CREATE TABLE analytics.kpi_monthly AS SELECT tenant_id, xero_connection_id, "
    "date '2026-05-01' AS period, 'revenue_net'::text AS kpi, sum(amount) AS value "
    "FROM analytics.invoices GROUP BY 1, 2",
    "GRANT SELECT ON analytics.kpi_monthly TO xero_elt_kpi_reader, xero_elt_analyst",
    # no grant: the analyst reads it through the pipeline role's default privileges
    "CREATE OR REPLACE VIEW analytics.invoice_totals AS "
    "SELECT tenant_id, sum(amount) AS total FROM analytics.invoices GROUP BY 1",
    # the KPI asset's trend table (orchestration/kpi_trends.py) names the tenants
    "SELECT k.tenant_id, coalesce(c.tenant_name, k.tenant_id) FROM analytics.kpi_monthly k "
    "LEFT JOIN app.xero_connections c ON c.tenant_id = k.tenant_id",
)

PIPELINE_REFUSED = (
    # the tokens, encrypted or not, and the rest of the service's data
    "SELECT access_token FROM app.xero_connections",
    "SELECT refresh_token FROM app.xero_connections",
    "SELECT * FROM app.xero_connections",
    "SELECT code_verifier FROM app.oauth_states",
    "SELECT * FROM app.webhook_events",
    "SELECT * FROM app.alembic_version",
    # no write, no DDL in app
    "UPDATE app.xero_connections SET tenant_name = 'x'",
    "INSERT INTO app.xero_connections (user_id, tenant_id) VALUES (gen_random_uuid(), 'tenant-roles-2')",
    "DELETE FROM app.xero_connections",
    "ALTER TABLE app.xero_connections ADD COLUMN pipeline_note text",
    "ALTER TABLE app.xero_connections DROP CONSTRAINT xero_connections_tokens_encrypted",
    "CREATE TABLE app.pipeline_scratch (i int)",
    "DROP SCHEMA app CASCADE",
    # the audit log and its append-only triggers
    "SELECT id FROM app.audit_log",
    "INSERT INTO app.audit_log (action) VALUES ('pipeline_probe')",
    "UPDATE app.audit_log SET action = 'nothing to see'",
    "DELETE FROM app.audit_log",
    "TRUNCATE app.audit_log",
    "ALTER TABLE app.audit_log DISABLE TRIGGER ALL",
    "ALTER TABLE app.audit_log DISABLE TRIGGER audit_log_no_update_delete",
    "DROP TRIGGER audit_log_no_truncate ON app.audit_log",
    "CREATE OR REPLACE FUNCTION app.audit_log_append_only() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RETURN NEW; END $$",
    "DROP FUNCTION app.audit_log_append_only() CASCADE",
    # a foreign key on another column than id
    "CREATE TABLE analytics.bad_fk (t varchar(255) REFERENCES app.xero_connections (tenant_id))",
    # nothing in public, and no other role
    "CREATE TABLE public.pipeline_scratch (i int)",
    f"SET ROLE {APP_ROLE}",
    f"SET ROLE {ANALYST_ROLE}",
    "SET ROLE postgres",
)

APP_COLUMNS_READ = {"id", "tenant_id", "tenant_name"}


@dataclass(frozen=True)
class Warehouse:
    url: str
    connection_id: uuid.UUID


@dataclass(frozen=True)
class Login:
    name: str
    url: str


def _assert_refused(conn: psycopg.Connection, statements) -> None:
    for statement in statements:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
            pytest.fail(f"{statement} succeeded")


def _login(url: str, role: str) -> Login:
    name = f"xero_elt_test_{role.removeprefix('xero_elt_')}_{uuid.uuid4().hex[:8]}"
    login_url = create_login(url, name, member_of=role)
    SEEN_SECRETS.add(psycopg.conninfo.conninfo_to_dict(login_url)["password"])
    return Login(name, login_url)


def _owners(conn: psycopg.Connection, schemas) -> dict[str, str]:
    """{schema or schema.relation: owner} of the schemas and everything in them."""
    rows = conn.execute(
        "SELECT nspname, nspowner::regrole::text FROM pg_namespace WHERE nspname = ANY(%(s)s) "
        "UNION ALL SELECT n.nspname || '.' || c.relname, c.relowner::regrole::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%(s)s) AND c.relkind <> 't'",
        {"s": list(schemas)},
    ).fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def warehouse(create_database) -> Warehouse:
    """A database of its own migrated to head, with one connected tenant (its tokens encrypted).
    Hardened as an operator may: PUBLIC may not create temporary tables (the pipeline's own grant serves
    dbt's incremental models)."""
    url = create_database("roles")
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(conn.info.dbname)))
        [connection_id] = conn.execute(
            "INSERT INTO app.xero_connections (user_id, tenant_id, tenant_name, access_token, refresh_token) "
            "VALUES (gen_random_uuid(), %s, 'Roles Ltd', 'v1:encrypted-access', 'v1:encrypted-refresh') "
            "RETURNING id",
            (TENANT,),
        ).fetchone()
    return Warehouse(url, connection_id)


@pytest.fixture(scope="module")
def logins(warehouse):
    """A login per group role, made as operators make them (create_login); dropped afterwards, which
    fails if one of them still owns anything."""
    roles = (PIPELINE_ROLE, APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE)
    made = {role: _login(warehouse.url, role) for role in roles}
    yield made
    for login in made.values():
        drop_app_login(warehouse.url, login.name)


@pytest.fixture(scope="module")
def built(warehouse, logins) -> Warehouse:
    """The pipeline's login has built the warehouse (BUILD)."""
    with psycopg.connect(logins[PIPELINE_ROLE].url, autocommit=True) as conn:
        for statement in BUILD:
            conn.execute(statement)
    return warehouse


def test_the_pipeline_login_acts_as_its_group_role_and_is_nothing_itself(warehouse, logins, postgres_server):
    """Its sessions in this database start as the group role, set by the server: no client (dbt, dlt,
    an RDS-style secret) needs to ask. As itself it may do nothing, so no object can be the login's."""
    login = logins[PIPELINE_ROLE]
    with psycopg.connect(login.url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (PIPELINE_ROLE, login.name)
        conn.execute("RESET ROLE")
        conn.execute("DISCARD ALL")
        assert conn.execute("SELECT current_user").fetchone() == (PIPELINE_ROLE,)
        conn.execute("SET ROLE NONE")
        _assert_refused(conn, ("CREATE SCHEMA IF NOT EXISTS raw_xero",
                               "CREATE TABLE analytics.by_login (i int)",
                               "SELECT * FROM raw_xero.invoices",
                               "SELECT id FROM app.xero_connections"))
    # only in this database: elsewhere on the server it is a bare login
    parts = urlsplit(login.url)
    elsewhere = urlunsplit((parts.scheme, parts.netloc, urlsplit(postgres_server.url).path, "", ""))
    with psycopg.connect(elsewhere, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (login.name,)
    with psycopg.connect(warehouse.url, autocommit=True) as owner:
        attrs = owner.execute(
            "SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
            "rolbypassrls, "
            "ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid), "
            "ARRAY(SELECT unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setrole = r.oid "
            "AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())) "
            "FROM pg_roles r WHERE rolname = %s",
            (login.name,),
        ).fetchone()
        assert attrs == (True, False, False, False, False, False, False, [PIPELINE_ROLE],
                         [f"role={PIPELINE_ROLE}"])
    with pytest.raises(SettingsError, match="never dropped"):
        drop_app_login(warehouse.url, PIPELINE_ROLE)


def test_the_pipeline_builds_and_owns_its_schemas(built, logins):
    """BUILD ran as the pipeline's login: every object is its group role's, and the foreign key to the
    service's connections holds."""
    login = logins[PIPELINE_ROLE]
    with psycopg.connect(built.url, autocommit=True) as conn:
        owners = _owners(conn, PIPELINE_SCHEMAS)
        assert {"raw_xero.invoices", "raw_xero_staging_t1.invoices", "raw_xero._xero_app_calls",
                "staging.stg_invoice_ids", "analytics.invoices", "analytics.kpi_monthly",
                "analytics.idx_invoices_xero_connection_id"} <= owners.keys()
        assert set(owners.values()) == {PIPELINE_ROLE}, owners
        assert conn.execute(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = %(r)s::regrole) "
            "+ (SELECT count(*) FROM pg_namespace WHERE nspowner = %(r)s::regrole)",
            {"r": login.name},
        ).fetchone() == (0,)
        assert conn.execute("SELECT DISTINCT xero_connection_id FROM analytics.invoices").fetchall() == [
            (built.connection_id,)
        ]
        fk = conn.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conrelid = 'analytics.invoices'::regclass AND contype = 'f'"
        ).fetchall()
        assert fk == [("app.xero_connections",)]
    with psycopg.connect(login.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM analytics.invoices").fetchone() == (2,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO analytics.invoices (id, xero_connection_id, tenant_id) "
                         "VALUES (gen_random_uuid(), gen_random_uuid(), 'nobody')")


def test_the_pipeline_cannot_read_tokens_nor_touch_the_app_schema(built, logins):
    with psycopg.connect(logins[PIPELINE_ROLE].url, autocommit=True) as conn:
        assert conn.execute("SELECT id, tenant_id, tenant_name FROM app.xero_connections").fetchall() == [
            (built.connection_id, TENANT, "Roles Ltd")
        ]
        _assert_refused(conn, PIPELINE_REFUSED)
        # A GRANT by a non-owner is refused or only warned about: either way, checked below
        for grant in (f"GRANT SELECT, UPDATE ON app.xero_connections TO {PIPELINE_ROLE}",
                      "GRANT UPDATE, DELETE, TRUNCATE ON app.audit_log TO PUBLIC"):
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute(grant)
    with psycopg.connect(built.url, autocommit=True) as owner:
        # exactly: SELECT on three columns, REFERENCES on one, and no table-wide privilege in app
        columns = {
            privilege: {
                c for (c,) in owner.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = 'app.xero_connections'::regclass "
                    "AND attnum > 0 AND NOT attisdropped AND has_column_privilege(%s, attrelid, attnum, %s)",
                    (PIPELINE_ROLE, privilege),
                )
            }
            for privilege in ("SELECT", "REFERENCES", "INSERT", "UPDATE")
        }
        assert columns == {"SELECT": APP_COLUMNS_READ, "REFERENCES": {"id"}, "INSERT": set(), "UPDATE": set()}
        assert owner.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' "
            "AND has_table_privilege(%s, oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')",
            (PIPELINE_ROLE,),
        ).fetchone() == (0,)
        assert owner.execute(
            "SELECT has_table_privilege('public', 'app.audit_log', 'UPDATE'), "
            "has_schema_privilege(%(r)s, 'app', 'CREATE'), has_schema_privilege(%(r)s, 'public', 'CREATE')",
            {"r": PIPELINE_ROLE},
        ).fetchone() == (False, False, False)
        # the audit log's triggers are there, enabled
        assert owner.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'app.audit_log'::regclass ORDER BY 1"
        ).fetchall() == [("audit_log_no_truncate", "O"), ("audit_log_no_update_delete", "O")]


def test_the_pipeline_role_is_a_plain_group_role(built):
    with psycopg.connect(built.url, autocommit=True) as conn:
        attrs = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            (PIPELINE_ROLE,),
        ).fetchone()
        assert attrs == (False,) * 6
        # a member of no role; no other group role is a member of it, nor it of them
        assert conn.execute(
            "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", (PIPELINE_ROLE,)
        ).fetchone() == (0,)
        for other in (APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE):
            assert conn.execute(
                "SELECT pg_has_role(%(a)s, %(b)s, 'MEMBER'), pg_has_role(%(b)s, %(a)s, 'MEMBER')",
                {"a": PIPELINE_ROLE, "b": other},
            ).fetchone() == (False, False), other
        assert conn.execute(
            "SELECT defaclnamespace::regnamespace::text, defaclobjtype, defaclacl::text[] "
            "FROM pg_default_acl WHERE defaclrole = %s::regrole",
            (PIPELINE_ROLE,),
        ).fetchall() == [("analytics", "r", [f"{ANALYST_ROLE}=r/{PIPELINE_ROLE}"])]


def test_the_analyst_reads_what_the_pipeline_builds_in_analytics_and_nothing_else(built, logins):
    with psycopg.connect(logins[PIPELINE_ROLE].url, autocommit=True) as pipeline:
        # a model added later, with no grants config: the default privileges serve it
        pipeline.execute("CREATE TABLE analytics.contacts AS SELECT 'c-1'::text AS contact_id")
    try:
        with psycopg.connect(logins[ANALYST_ROLE].url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM analytics.invoices").fetchone() == (2,)
            assert conn.execute("SELECT total FROM analytics.invoice_totals").fetchone() == (350,)
            assert conn.execute("SELECT value FROM analytics.kpi_monthly").fetchone() == (350,)
            assert conn.execute("SELECT contact_id FROM analytics.contacts").fetchall() == [("c-1",)]
            _assert_refused(conn, (
                "SELECT * FROM raw_xero.invoices",
                "SELECT * FROM raw_xero._xero_app_calls",
                "SELECT * FROM raw_xero_staging_t1.invoices",
                "SELECT * FROM staging.stg_xero__invoices",
                "SELECT * FROM staging.dbt_load_batches",
                "SELECT id FROM app.xero_connections",
                "INSERT INTO analytics.contacts VALUES ('c-2')",
                "DELETE FROM analytics.invoices",
                "DROP VIEW analytics.invoice_totals",
                "CREATE TABLE analytics.analyst_scratch (i int)",
                f"SET ROLE {PIPELINE_ROLE}",
            ))
        with psycopg.connect(logins[KPI_READER_ROLE].url, autocommit=True) as conn:
            _assert_refused(conn, ("SELECT * FROM analytics.contacts",))  # no default privileges for it
    finally:
        with psycopg.connect(logins[PIPELINE_ROLE].url, autocommit=True) as pipeline:
            pipeline.execute("DROP TABLE analytics.contacts")


def test_the_kpi_reader_reads_the_kpi_table_only(built, logins):
    with psycopg.connect(logins[KPI_READER_ROLE].url, autocommit=True) as conn:
        assert conn.execute("SELECT tenant_id, kpi, value FROM analytics.kpi_monthly").fetchall() == [
            (TENANT, "revenue_net", 350)
        ]
        _assert_refused(conn, (
            "SELECT * FROM analytics.invoices",
            "SELECT * FROM analytics.invoice_totals",
            "SELECT * FROM raw_xero.invoices",
            "SELECT * FROM staging.stg_xero__invoices",
            "SELECT id FROM app.xero_connections",
            "INSERT INTO analytics.kpi_monthly (tenant_id) VALUES ('x')",
            "DELETE FROM analytics.kpi_monthly",
            "CREATE TABLE analytics.kpi_scratch (i int)",
            f"SET ROLE {PIPELINE_ROLE}",
        ))


def test_the_service_keeps_its_tables_and_touches_none_of_the_pipelines(built, logins):
    with psycopg.connect(logins[APP_ROLE].url) as conn:
        assert conn.execute(
            "SELECT access_token FROM app.xero_connections WHERE tenant_id = %s", (TENANT,)
        ).fetchone() == ("v1:encrypted-access",)
        conn.execute("UPDATE app.xero_connections SET last_sync = now() WHERE tenant_id = %s", (TENANT,))
        conn.execute("INSERT INTO app.audit_log (action, tenant_id) VALUES ('roles_probe', %s)", (TENANT,))
        conn.execute(f"SET LOCAL ROLE {KPI_READER_ROLE}")  # as the KPI route reads (oauth_service/kpis.py)
        assert conn.execute("SELECT value FROM analytics.kpi_monthly").fetchone() == (350,)
        conn.commit()
    with psycopg.connect(logins[APP_ROLE].url, autocommit=True) as conn:
        _assert_refused(conn, (
            "SELECT * FROM raw_xero.invoices",
            "INSERT INTO raw_xero._xero_app_calls VALUES (now())",
            "SELECT * FROM raw_xero_staging_t1.invoices",
            "SELECT * FROM staging.dbt_load_batches",
            "SELECT * FROM analytics.invoices",
            "INSERT INTO analytics.kpi_monthly (tenant_id) VALUES ('x')",
            "UPDATE analytics.kpi_monthly SET value = 0",
            "DELETE FROM analytics.kpi_monthly",
            "CREATE TABLE analytics.app_scratch (i int)",
            "CREATE TABLE raw_xero.app_scratch (i int)",
            "CREATE TABLE app.app_scratch (i int)",
            "CREATE TABLE public.app_scratch (i int)",
            "CREATE SCHEMA app_scratch",
            f"SET ROLE {PIPELINE_ROLE}",
        ))


# ----------------------------------------------------------------------------- migration 0006
EXISTING = """
CREATE SCHEMA raw_xero;
CREATE TABLE raw_xero.invoices (seq bigint GENERATED ALWAYS AS IDENTITY, invoice_id text, total numeric);
INSERT INTO raw_xero.invoices (invoice_id, total) VALUES ('inv-1', 100);
CREATE SEQUENCE raw_xero.standalone_seq;
CREATE SCHEMA raw_xero_staging_t1;
CREATE TABLE raw_xero_staging_t1.invoices (LIKE raw_xero.invoices);
CREATE SCHEMA staging;
CREATE TABLE staging.stg_xero__invoices AS SELECT invoice_id, total FROM raw_xero.invoices;
CREATE TABLE analytics.invoices (id uuid PRIMARY KEY, amount numeric,
                                 xero_connection_id uuid REFERENCES app.xero_connections (id));
INSERT INTO analytics.invoices VALUES (gen_random_uuid(), 100, NULL);
CREATE VIEW analytics.invoice_totals AS SELECT sum(amount) AS total FROM analytics.invoices;
CREATE MATERIALIZED VIEW analytics.invoice_count AS SELECT count(*) AS n FROM analytics.invoices;
"""


def _pipeline_may(conn: psycopg.Connection) -> dict[str, object]:
    checks = {
        "create in the database": "has_database_privilege(%(r)s, current_database(), 'CREATE')",
        "use app": "has_schema_privilege(%(r)s, 'app', 'USAGE')",
        "read connection ids": "has_column_privilege(%(r)s, 'app.xero_connections', 'id', 'SELECT')",
        "reference connection ids": "has_column_privilege(%(r)s, 'app.xero_connections', 'id', 'REFERENCES')",
        "default privileges": "(SELECT count(*) FROM pg_default_acl WHERE defaclrole = %(r)s::regrole)",
    }
    return {name: conn.execute("SELECT " + check, {"r": PIPELINE_ROLE}).fetchone()[0]
            for name, check in checks.items()}


GRANTED = {
    "create in the database": True,
    "use app": True,
    "read connection ids": True,
    "reference connection ids": True,
    "default privileges": 1,
}


def test_0006_hands_an_existing_deployment_to_the_pipeline_and_its_downgrade_takes_it_back(create_database):
    url = create_database("mig6")
    migrations.upgrade(url, "0005_kpi_reader_for_service")
    with psycopg.connect(url, autocommit=True) as conn:  # the pipeline ran as the owner until now
        conn.execute(EXISTING)
        before = _owners(conn, PIPELINE_SCHEMAS)
    assert set(before.values()) == {"postgres"}, before
    assert {"raw_xero_staging_t1", "raw_xero.invoices_seq_seq", "raw_xero.standalone_seq",
            "analytics.invoices_pkey", "analytics.invoice_count"} <= before.keys()

    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _owners(conn, PIPELINE_SCHEMAS) == dict.fromkeys(before, PIPELINE_ROLE)
        assert _pipeline_may(conn) == GRANTED
    analyst = _login(url, ANALYST_ROLE)
    pipeline = _login(url, PIPELINE_ROLE)
    try:
        with psycopg.connect(analyst.url, autocommit=True) as conn:  # its grants survived the hand-over
            assert conn.execute("SELECT total FROM analytics.invoice_totals").fetchone() == (100,)
        with psycopg.connect(pipeline.url, autocommit=True) as conn:  # what only an owner may
            conn.execute("ALTER TABLE raw_xero.invoices ADD COLUMN currency_code text")
            conn.execute("INSERT INTO raw_xero.invoices (invoice_id, total) VALUES ('inv-2', 250)")
            conn.execute("SELECT nextval('raw_xero.standalone_seq')")
            conn.execute("CREATE INDEX invoices__record_idx ON raw_xero.invoices (invoice_id)")
            conn.execute("DROP TABLE raw_xero_staging_t1.invoices")
            conn.execute("REFRESH MATERIALIZED VIEW analytics.invoice_count")
            conn.execute("ALTER TABLE analytics.invoices RENAME TO invoices__dbt_backup")
            conn.execute("ALTER TABLE analytics.invoices__dbt_backup RENAME TO invoices")

        migrations.downgrade(url, "0005_kpi_reader_for_service")
        with psycopg.connect(url, autocommit=True) as conn:
            after = _owners(conn, PIPELINE_SCHEMAS)
            assert set(after.values()) == {"postgres"}, after
            assert _pipeline_may(conn) == dict.fromkeys(GRANTED, False) | {"default privileges": 0}
            # cluster-wide: the role stays, as do the other databases' grants to it
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PIPELINE_ROLE,)).fetchone()
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            _assert_refused(conn, ("CREATE SCHEMA IF NOT EXISTS raw_xero", "SELECT * FROM raw_xero.invoices"))
        with psycopg.connect(analyst.url, autocommit=True) as conn:
            assert conn.execute("SELECT total FROM analytics.invoice_totals").fetchone() == (100,)

        migrations.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert set(_owners(conn, PIPELINE_SCHEMAS).values()) == {PIPELINE_ROLE}
            assert _pipeline_may(conn) == GRANTED
    finally:
        drop_app_login(url, analyst.name)
        drop_app_login(url, pipeline.name)


def _is_member(conn: psycopg.Connection) -> bool:
    """May act as the pipeline role (SET ROLE; from PostgreSQL 16 a member may be refused that)."""
    right = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    return conn.execute("SELECT pg_has_role(current_user, %s, %s)", (PIPELINE_ROLE, right)).fetchone()[0]


def test_a_createrole_owner_that_is_no_superuser_migrates_the_pipeline_role(
    postgres_server, migrated_database_url
):
    """The RDS master user's case, in a second database of the server: xero_elt_pipeline exists already
    (migrated_database_url's migration made it) and the owner, CREATEROLE but no superuser, is no member of
    it: 0006 makes it one, then hands it the owner's objects."""
    owner = f"xero_elt_test_owner_{uuid.uuid4().hex[:8]}"
    database = f"xero_elt_test_owned_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(24)
    SEEN_SECRETS.add(password)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PIPELINE_ROLE,)).fetchone() == (1,)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOSUPERUSER PASSWORD {}").format(
            sql.Identifier(owner), sql.Literal(scram_sha256_verifier(password))))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(database), sql.Identifier(owner)))
        administer_group_roles_as_their_creator(conn, owner)
    server = urlsplit(postgres_server.url)
    owner_url = urlunsplit(("postgresql", f"{owner}:{password}@{server.netloc.rpartition('@')[2]}",
                            f"/{database}", server.query, ""))
    try:
        migrations.upgrade(owner_url, "0005_kpi_reader_for_service")
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA raw_xero; CREATE TABLE raw_xero.invoices (invoice_id text)")
            assert not _is_member(conn)
        migrations.upgrade(owner_url)
        assert migrations.current(owner_url) == migrations.head()
        with psycopg.connect(owner_url, autocommit=True) as conn:
            assert _is_member(conn)
            assert set(_owners(conn, ("raw_xero", "staging", "analytics")).values()) == {PIPELINE_ROLE}
            assert _pipeline_may(conn) == GRANTED
        migrations.downgrade(owner_url, "0005_kpi_reader_for_service")
        with psycopg.connect(owner_url, autocommit=True) as conn:
            assert set(_owners(conn, ("raw_xero", "staging", "analytics")).values()) == {owner}
            assert _pipeline_may(conn) == dict.fromkeys(GRANTED, False) | {"default privileges": 0}
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        drop_app_login(postgres_server.url, owner)


def test_the_kpi_route_reads_only_a_plain_table_never_the_pipelines_code(create_database):
    """The pipeline owns analytics.kpi_monthly. Made a view over its own function, the KPI route
    (the service's login under SET LOCAL ROLE kpi_reader) would run that function, which may take the
    login's rights back with set_config('role'): the route refuses to read, and nothing ran."""
    from datetime import date

    from sqlalchemy import create_engine

    from oauth_service.kpis import KpiQuery, KpiTableUntrusted, read_kpis

    url = create_database("kpiview")
    migrations.upgrade(url)
    pipeline, service = _login(url, PIPELINE_ROLE), _login(url, APP_ROLE)
    try:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE analytics.loot (token text)")
            conn.execute("GRANT INSERT ON analytics.loot TO PUBLIC")
            conn.execute(
                "CREATE FUNCTION analytics.steal() RETURNS numeric LANGUAGE plpgsql AS $$ BEGIN "
                "PERFORM set_config('role', 'none', true); "
                "INSERT INTO analytics.loot SELECT access_token FROM app.xero_connections; RETURN 1; END $$")
            conn.execute(
                "CREATE VIEW analytics.kpi_monthly AS SELECT 't'::text AS tenant_id, "
                "date '2026-01-01' AS period, 'revenue_invoiced'::varchar AS kpi, "
                "analytics.steal() AS value, 'currency'::varchar AS unit, 'NZD'::varchar AS currency")
            conn.execute("GRANT SELECT ON analytics.kpi_monthly TO xero_elt_kpi_reader")
        engine = create_engine(service.url.replace("postgresql://", "postgresql+psycopg://", 1))
        query = KpiQuery.parse("2026-01", "2026-01", ["revenue_invoiced"], date(2026, 2, 1))
        with (engine.connect() as conn, conn.begin(),
              pytest.raises(KpiTableUntrusted, match="not a plain table")):
            read_kpis(conn, "t", query)
        engine.dispose()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM analytics.loot").fetchone()[0] == 0
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA analytics CASCADE")
        drop_app_login(url, pipeline.name)
        drop_app_login(url, service.name)
