"""The pipeline's own group role, `xero_elt_pipeline` (NOLOGIN): dlt, dbt and the orchestration's
DATABASE_URL run as a login member of it, no longer as the database's owner.

What it holds in this database, and why:
- it OWNS schemas `raw_xero` (dlt), `staging` (dbt's staging models and `dbt_load_batches`) and
  `analytics` (dbt's marts), and everything in them. dlt adds columns, dbt renames, swaps, drops and
  indexes its tables (also dbt's index on dlt's raw tables): only an owner may. Objects a deployment
  built before this migration (as the owner) are handed over, as are dlt's per-tenant staging schemas
  `raw_xero_staging_<tenant>`; what the migrating login cannot act as the owner of is left, with a NOTICE;
- CREATE and TEMPORARY on the database: dlt creates a staging schema per tenant, and dlt, dbt and the
  orchestration run `CREATE SCHEMA IF NOT EXISTS`, which needs CREATE on the database even when the
  schema exists; dbt's incremental models build temporary tables. Nothing in `app` or `public`;
- of `app`: USAGE, SELECT on `xero_connections (id, tenant_id, tenant_name)` (dbt joins on tenant_id for
  the id; the KPI asset shows tenant names) and REFERENCES on its `id` (the foreign key of
  `analytics.invoices`). Not the token columns, nothing of `audit_log` (the run audit writes through
  the token vault's login, APP_DATABASE_URL), no write, no DDL: the schema and its tables stay the
  owner's, so the audit triggers are out of its reach;
- its default privileges give `xero_elt_analyst` SELECT on every table and view it creates in
  `analytics`, as the owner's do since 0004: analysts read what the pipeline builds. The KPI reader gets
  `analytics.kpi_monthly` from dbt's grants config (run as the pipeline role, which owns the table).

Logins: `db.create_login(url, name, member_of="xero_elt_pipeline")`: NOINHERIT, and set by the server to act
as the role in this database, so what dlt and dbt create is the role's, never the login's.
Whoever reads its objects runs its code (a view may call its functions, with the reader's rights): read
them as logins with nothing more to lose (an analyst's, its own), not as the owner.

The migrating login is made a member of the role where it is not (as 0003 does for `xero_elt_app`): it
must act as the role to hand it objects and to set its default privileges. The role is created only when
missing (roles are cluster-wide: another database of the server may have created it, possibly at the same
moment), and everything is skipped, with a NOTICE, where the migrating login may not, as in 0001/0004.

Downgrade: what the role owns in this database goes back to the migrating login (REASSIGN OWNED: this
database only), and its grants and default privileges here are revoked. The role, the schemas and the
migrating login's membership are kept: cluster-wide, other databases rely on them (see 0003 and 0004).

Revision ID: 0006_pipeline_role
Revises: 0005_kpi_reader_for_service
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0006_pipeline_role"
down_revision = "0005_kpi_reader_for_service"
branch_labels = None
depends_on = None

PIPELINE_ROLE = "xero_elt_pipeline"

# pg_has_role's 'SET' (may SET ROLE, which ALTER ... OWNER TO needs) exists from PostgreSQL 16.
UPGRADE = r"""
CREATE SCHEMA IF NOT EXISTS raw_xero;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS analytics;

DO $$
DECLARE
    pipeline oid;
    obj record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_pipeline') THEN
        BEGIN
            CREATE ROLE xero_elt_pipeline NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
    END IF;
    pipeline := 'xero_elt_pipeline'::regrole;
    IF NOT pg_has_role(current_user, pipeline,
            CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END) THEN
        EXECUTE format('GRANT xero_elt_pipeline TO %I', current_user);
    END IF;

    -- Before the schemas change hands: a schema's new owner must have CREATE on the database.
    EXECUTE format('GRANT CREATE, TEMPORARY ON DATABASE %I TO xero_elt_pipeline', current_database());

    FOR obj IN
        SELECT n.nspname, n.nspowner FROM pg_namespace n
        WHERE (n.nspname IN ('raw_xero', 'staging', 'analytics') OR n.nspname LIKE 'raw\_xero\_staging\_%')
          AND n.nspowner <> pipeline
    LOOP
        IF pg_has_role(current_user, obj.nspowner, 'USAGE') THEN
            EXECUTE format('ALTER SCHEMA %I OWNER TO xero_elt_pipeline', obj.nspname);
        ELSE
            RAISE NOTICE 'schema % is owned by %, not handed to xero_elt_pipeline',
                obj.nspname, obj.nspowner::regrole;
        END IF;
    END LOOP;

    -- Indexes, and the sequences of identity and serial columns, follow their table; a sequence linked
    -- to a column cannot change owner on its own.
    FOR obj IN
        SELECT c.oid::regclass AS rel, c.relowner,
               CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                              WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspowner = pipeline AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relowner <> pipeline
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND c.relkind = 'S' AND d.deptype IN ('a', 'i'))
    LOOP
        IF pg_has_role(current_user, obj.relowner, 'USAGE') THEN
            EXECUTE format('ALTER %s %s OWNER TO xero_elt_pipeline', obj.kind, obj.rel);
        ELSE
            RAISE NOTICE '% is owned by %, not handed to xero_elt_pipeline', obj.rel, obj.relowner::regrole;
        END IF;
    END LOOP;

    GRANT USAGE ON SCHEMA app TO xero_elt_pipeline;
    GRANT SELECT (id, tenant_id, tenant_name), REFERENCES (id) ON app.xero_connections TO xero_elt_pipeline;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_analyst') THEN
        ALTER DEFAULT PRIVILEGES FOR ROLE xero_elt_pipeline IN SCHEMA analytics
            GRANT SELECT ON TABLES TO xero_elt_analyst;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'xero_elt_pipeline role not created/granted: %', SQLERRM;
END
$$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_pipeline') THEN
        RETURN;
    END IF;
    REASSIGN OWNED BY xero_elt_pipeline TO CURRENT_USER;
    IF to_regnamespace('analytics') IS NOT NULL
            AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_analyst') THEN
        ALTER DEFAULT PRIVILEGES FOR ROLE xero_elt_pipeline IN SCHEMA analytics
            REVOKE SELECT ON TABLES FROM xero_elt_analyst;
    END IF;
    IF to_regclass('app.xero_connections') IS NOT NULL THEN
        REVOKE ALL ON app.xero_connections FROM xero_elt_pipeline;  -- its column privileges too
    END IF;
    REVOKE ALL ON SCHEMA app FROM xero_elt_pipeline;
    EXECUTE format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM xero_elt_pipeline', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'xero_elt_pipeline grants not taken back: %', SQLERRM;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
