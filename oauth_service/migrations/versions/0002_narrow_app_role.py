"""Least privilege, narrower: the application role loses what no code uses.

- DELETE on app.xero_connections and app.webhook_events (only app.oauth_states is ever pruned);
- SELECT on app.audit_log, except the columns the code reads: `id` (INSERT … RETURNING id) and
  `action`, `record_id` (the orchestration's once-per-run check in orchestration/run_audit.py).
  Who did what, from where, with which metadata, is no longer readable by the app's login.

Revision ID: 0002_narrow_app_role
Revises: 0001_app_schema
Create Date: 2026-05-22
"""

from __future__ import annotations

from alembic import op

revision = "0002_narrow_app_role"
down_revision = "0001_app_schema"
branch_labels = None
depends_on = None

UPGRADE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app') THEN
        REVOKE DELETE ON app.xero_connections, app.webhook_events FROM xero_elt_app;
        REVOKE SELECT ON app.audit_log FROM xero_elt_app;
        GRANT SELECT (id, action, record_id) ON app.audit_log TO xero_elt_app;
    END IF;
END
$$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app') THEN
        REVOKE SELECT (id, action, record_id) ON app.audit_log FROM xero_elt_app;
        GRANT SELECT ON app.audit_log TO xero_elt_app;
        GRANT DELETE ON app.xero_connections, app.webhook_events TO xero_elt_app;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
