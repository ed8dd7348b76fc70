"""The OAuth service's KPI route reads `analytics.kpi_monthly` as `xero_elt_kpi_reader`.

The route checks, as `xero_elt_app`, that the tenant is the caller's, then reads the KPIs inside a
transaction under `SET LOCAL ROLE xero_elt_kpi_reader`: for that query only the KPI table is
readable (not `app`, not `raw_xero`). SET ROLE needs membership, so `xero_elt_app` becomes a
member of `xero_elt_kpi_reader` (NOINHERIT is not available per grant before PostgreSQL 16; the
app role thereby also reads the KPI table, and nothing else of `analytics`).

Skipped, with a NOTICE, where either role is missing (a migrating login that may not create roles).

Revision ID: 0005_kpi_reader_for_service
Revises: 0004_analyst_roles
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005_kpi_reader_for_service"
down_revision = "0004_analyst_roles"
branch_labels = None
depends_on = None


def _if_both_roles(statement: str) -> str:
    return f"""
    DO $$
    BEGIN
      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app')
         AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_kpi_reader') THEN
        {statement};
      ELSE
        RAISE NOTICE 'xero_elt_app or xero_elt_kpi_reader is missing: membership not changed';
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE NOTICE 'this login may not grant xero_elt_kpi_reader: membership not changed';
    END $$;
    """  # noqa: S608 - a constant statement of this module


def upgrade() -> None:
    op.execute(_if_both_roles("GRANT xero_elt_kpi_reader TO xero_elt_app"))


def downgrade() -> None:
    # Cluster-wide, like the roles themselves (see 0004): other databases' services use it too.
    pass
