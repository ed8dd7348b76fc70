"""App schema: xero_connections, audit_log (append-only), oauth_states, webhook_events.

Revision ID: 0001_app_schema
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

from alembic import op

revision = "0001_app_schema"
down_revision = None
branch_labels = None
depends_on = None

APP_ROLE = "xero_elt_app"

UPGRADE = r"""
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE app.xero_connections (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             UUID NOT NULL,
    tenant_id           VARCHAR(255) NOT NULL UNIQUE,
    tenant_name         TEXT,
    tenant_type         VARCHAR(32),
    -- Tokens are stored encrypted (Fernet, `v1:` prefix); never a usable token in clear.
    access_token        TEXT,
    refresh_token       TEXT,
    token_expires_at    TIMESTAMPTZ,
    scopes              TEXT,
    xero_connection_id  VARCHAR(64),
    auth_event_id       VARCHAR(64),
    -- One Xero authorisation (token set) may cover several tenants: they share a grant_id and
    -- are refreshed together, under one lock, because they share one rotating refresh token.
    grant_id            UUID,
    status              VARCHAR(32) NOT NULL DEFAULT 'active',
    status_reason       TEXT,
    connected_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_sync           TIMESTAMPTZ,
    last_refreshed_at   TIMESTAMPTZ,
    disconnected_at     TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT xero_connections_status_check
        CHECK (status IN ('active', 'reauth_required', 'disconnected')),
    CONSTRAINT xero_connections_tokens_encrypted
        CHECK ((access_token IS NULL OR access_token LIKE 'v1:%')
           AND (refresh_token IS NULL OR refresh_token LIKE 'v1:%')),
    CONSTRAINT xero_connections_disconnected_has_no_tokens
        CHECK (status <> 'disconnected' OR (access_token IS NULL AND refresh_token IS NULL))
);
CREATE INDEX ix_xero_connections_user_id ON app.xero_connections (user_id);
CREATE INDEX ix_xero_connections_grant_id ON app.xero_connections (grant_id);
CREATE INDEX ix_xero_connections_status ON app.xero_connections (status);

CREATE TABLE app.audit_log (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         UUID,
    action          VARCHAR(100) NOT NULL,
    table_accessed  VARCHAR(100),
    record_id       VARCHAR(255),
    tenant_id       VARCHAR(255),
    outcome         VARCHAR(16) NOT NULL DEFAULT 'success',
    metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
    ip_address      INET,
    "timestamp"     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT audit_log_outcome_check CHECK (outcome IN ('success', 'failure', 'denied'))
);
CREATE INDEX ix_audit_log_user_id ON app.audit_log (user_id);
CREATE INDEX ix_audit_log_timestamp ON app.audit_log ("timestamp");
CREATE INDEX ix_audit_log_tenant_id ON app.audit_log (tenant_id);

CREATE FUNCTION app.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'app.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON app.audit_log
    FOR EACH ROW EXECUTE FUNCTION app.audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON app.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION app.audit_log_append_only();

CREATE TABLE app.oauth_states (
    state_hash          CHAR(64) PRIMARY KEY,          -- sha256 of the state; the state itself is not kept
    user_id             UUID NOT NULL,
    code_verifier       TEXT NOT NULL,                 -- PKCE verifier, encrypted like the tokens
    browser_binding     CHAR(64),                      -- sha256 of the initiating browser's cookie
    ip_address          INET,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    used_at             TIMESTAMPTZ,
    CONSTRAINT oauth_states_verifier_encrypted CHECK (code_verifier LIKE 'v1:%')
);
CREATE INDEX ix_oauth_states_expires_at ON app.oauth_states (expires_at);
CREATE INDEX ix_oauth_states_user_id ON app.oauth_states (user_id);

CREATE TABLE app.webhook_events (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           VARCHAR(255) NOT NULL,
    tenant_type         VARCHAR(32),
    event_category      VARCHAR(32) NOT NULL,
    event_type          VARCHAR(32) NOT NULL,
    resource_id         VARCHAR(255) NOT NULL,
    resource_url        TEXT,
    event_date          TIMESTAMPTZ,
    received_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at        TIMESTAMPTZ,
    CONSTRAINT webhook_events_dedup
        UNIQUE NULLS NOT DISTINCT (tenant_id, event_category, resource_id, event_type, event_date)
);
CREATE INDEX ix_webhook_events_unprocessed ON app.webhook_events (tenant_id, received_at)
    WHERE processed_at IS NULL;

-- Least privilege: the application role may read and write connections, states and webhook
-- events, but only SELECT and INSERT the audit log. Roles are cluster-wide, so creating one is
-- skipped quietly where the migrating user may not.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app') THEN
        CREATE ROLE xero_elt_app NOLOGIN;
    END IF;
    GRANT USAGE ON SCHEMA app TO xero_elt_app;
    GRANT SELECT, INSERT, UPDATE, DELETE
        ON app.xero_connections, app.oauth_states, app.webhook_events TO xero_elt_app;
    GRANT SELECT, INSERT ON app.audit_log TO xero_elt_app;
    REVOKE UPDATE, DELETE, TRUNCATE ON app.audit_log FROM xero_elt_app;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'xero_elt_app role not created/granted: %', SQLERRM;
END
$$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA app FROM xero_elt_app;
        REVOKE USAGE ON SCHEMA app FROM xero_elt_app;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;
DROP TABLE IF EXISTS app.webhook_events;
DROP TABLE IF EXISTS app.oauth_states;
DROP TABLE IF EXISTS app.audit_log;
DROP FUNCTION IF EXISTS app.audit_log_append_only();
DROP TABLE IF EXISTS app.xero_connections;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
