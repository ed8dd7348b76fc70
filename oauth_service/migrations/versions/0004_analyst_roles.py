"""Read-only group roles for the warehouse: `xero_elt_analyst` and `xero_elt_kpi_reader` (NOLOGIN).

- `xero_elt_analyst` may SELECT every table and view in schema `analytics` (dbt's target schema) and
  nothing else: no USAGE on `app`, `raw_xero` or `staging` (dbt's staging models), no CREATE in any
  schema (on PostgreSQL 15 and later PUBLIC has no CREATE on `public`; before 15 it has, for every role,
  unless the server's administrator revoked it). Schema `analytics` is created here when missing, and
  the migrating login's default privileges in it grant SELECT on every table and view it creates later:
  dbt builds the models as the same login (DATABASE_URL), after the migrations.
- `xero_elt_kpi_reader` gets USAGE on schema `analytics` only. Its one table, `analytics.kpi_monthly`,
  does not exist yet at migration time: dbt creates it and grants SELECT on it to this role (the
  model's `grants` config). That config must list `xero_elt_analyst` as well: on an incremental run dbt
  revokes the SELECT grants the config does not name, including the one the default privileges gave.

Logins are made with `python -m oauth_service create-analyst-login NAME` (`db.create_analyst_login`).

Roles are cluster-wide: each is created only when missing (another database of the server may have
created it already, possibly at the same moment), and quietly skipped, with a NOTICE, where the migrating
login may not create roles, as in 0001.

Downgrade revokes this database's grants and default privileges, and keeps the roles and schema
`analytics`: other databases of the same server grant to the same roles, and DROP ROLE would also remove,
silently, every login's membership in them (0001's downgrade keeps `xero_elt_app` likewise). Left in
place a role holds nothing in this database; upgrading again reuses it. The schema holds dbt's models,
not this migration's.

Revision ID: 0004_analyst_roles
Revises: 0003_owner_may_set_app_role
Create Date: 2026-05-27
"""

from __future__ import annotations

from alembic import op

revision = "0004_analyst_roles"
down_revision = "0003_owner_may_set_app_role"
branch_labels = None
depends_on = None

ANALYST_ROLE = "xero_elt_analyst"
KPI_READER_ROLE = "xero_elt_kpi_reader"

# The inner block: a concurrent migration of another database may create the role between the check
# and CREATE ROLE (duplicate_object, or unique_violation on pg_authid): it exists then, as wanted.
UPGRADE = r"""
CREATE SCHEMA IF NOT EXISTS analytics;

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['xero_elt_analyst', 'xero_elt_kpi_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    GRANT USAGE ON SCHEMA analytics TO xero_elt_analyst, xero_elt_kpi_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO xero_elt_analyst;
    ALTER DEFAULT PRIVILEGES IN SCHEMA analytics GRANT SELECT ON TABLES TO xero_elt_analyst;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'xero_elt_analyst/xero_elt_kpi_reader roles not created/granted: %', SQLERRM;
END
$$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF to_regnamespace('analytics') IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_analyst') THEN
        ALTER DEFAULT PRIVILEGES IN SCHEMA analytics REVOKE ALL ON TABLES FROM xero_elt_analyst;
        REVOKE ALL ON ALL TABLES IN SCHEMA analytics FROM xero_elt_analyst;
        REVOKE ALL ON SCHEMA analytics FROM xero_elt_analyst;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_kpi_reader') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA analytics FROM xero_elt_kpi_reader;
        REVOKE ALL ON SCHEMA analytics FROM xero_elt_kpi_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
