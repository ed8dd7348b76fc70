"""The migrating login may `SET ROLE xero_elt_app`: the pipeline vault's fallback (db.app_engine
without APP_DATABASE_URL) needs it.

A CREATEROLE login that is not a superuser (e.g. the RDS master user) is not made a member of the
roles it creates on PostgreSQL 15 and older, and only an ADMIN member without SET from 16 on: after
0001 it could not SET ROLE xero_elt_app, and the vault refused to connect. It now grants the role to
itself (CREATEROLE allows that up to 15; from 16 the ADMIN OPTION its creation gave does). Superusers
and logins that may already SET ROLE get nothing. Where the grant is not allowed (from 16, a role
created by another login) a NOTICE says so, as in 0001.

Downgrade: nothing is revoked. Role memberships are cluster-wide: another database migrated by the
same login relies on the same membership (and 0001's downgrade keeps the role itself, too).

Revision ID: 0003_owner_may_set_app_role
Revises: 0002_narrow_app_role
Create Date: 2026-05-25
"""

from __future__ import annotations

from alembic import op

revision = "0003_owner_may_set_app_role"
down_revision = "0002_narrow_app_role"
branch_labels = None
depends_on = None

# pg_has_role's 'SET' (may SET ROLE) exists from PostgreSQL 16; before, every member may.
UPGRADE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app') THEN
        RETURN;  -- 0001 could not create it (its NOTICE said so)
    END IF;
    IF NOT pg_has_role(current_user, 'xero_elt_app',
            CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END) THEN
        EXECUTE format('GRANT xero_elt_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'xero_elt_app not granted to %: %', current_user, SQLERRM;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    pass  # see the module docstring
