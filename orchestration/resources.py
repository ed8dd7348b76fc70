"""Dagster resources: the token vault (oauth_service), the per-tenant dlt pipeline, dbt."""

from __future__ import annotations

import os
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import dlt
import psycopg
from dagster_dbt import DbtCliResource
from dagster_dlt import DagsterDltResource
from psycopg import sql

from oauth_service.settings import Settings as ServiceSettings
from oauth_service.vault import TokenVault
from orchestration.dbt_project import DBT_EXECUTABLE, xero_dbt_project
from orchestration.settings import RAW_SCHEMA
from xero_source import AppBudget, SourceSettings, XeroClient, shared_postgres, xero_source


@cache
def _vault(database_url: str) -> TokenVault:
    return TokenVault(ServiceSettings.from_env(for_service=False))


class TokenVaultResource(dg.ConfigurableResource):
    """Access tokens per tenant, refreshed safely by oauth_service's vault."""

    def get(self) -> TokenVault:
        return _vault(os.environ["DATABASE_URL"])


def dlt_credentials(database_url: str) -> str:
    """dlt insists on a password; servers with trust/peer authentication (the embedded one, CI)
    have none and ignore whatever is sent, so give it a placeholder only when the URL has none."""
    parts = urlsplit(database_url)
    if parts.password is not None or not parts.username:
        return database_url
    netloc = f"{parts.username}:unused@{parts.netloc.split('@', 1)[1]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class XeroPipelineResource(dg.ConfigurableResource):
    """Builds one tenant's dlt source and pipeline.

    One pipeline per tenant (`xero_<tenant>`): dlt keeps its incremental state per pipeline, so a
    shared pipeline would share one cursor across tenants. Each tenant also merges through its own
    staging schema, so concurrent tenants never merge through the same tables (dlt issue 4297).
    That schema exists only while the tenant extracts (`release_staging`).
    """

    raw_schema: str = RAW_SCHEMA

    def client(self, tenant_id: str, vault: TokenVault, app_budget: AppBudget | None = None) -> XeroClient:
        """The tenant's Xero client; its `stats` say what the run cost (calls, bytes, limits left).
        `app_budget`: Xero's app-wide minute, shared with every other tenant's extract."""
        return XeroClient(
            tenant_id,
            token_provider=lambda: vault.access_token_for(tenant_id),
            token_rejected=lambda token: vault.access_token_rejected(tenant_id, token),
            settings=SourceSettings.from_env(),
            app_budget=app_budget,
        )

    def source(self, client: XeroClient, full_refresh: bool = False):
        return xero_source(client.tenant_id, token_provider=client.token_provider, settings=client.settings,
                           full_refresh=full_refresh, client=client)

    def _staging_schema(self, tenant_id: str) -> str:
        return f"{self.raw_schema}_staging_{tenant_id.replace('-', '')}"

    def pipeline(self, tenant_id: str) -> dlt.Pipeline:
        compact = tenant_id.replace("-", "")
        database_url = os.environ["DATABASE_URL"]
        _drop_staging_made_for_records(database_url, self._staging_schema(tenant_id))
        destination = shared_postgres(
            credentials=dlt_credentials(database_url),
            staging_dataset_name_layout=f"%s_staging_{compact}",
        )
        return dlt.pipeline(
            pipeline_name=f"xero_{compact}",
            destination=destination,
            dataset_name=self.raw_schema,
        )


    def release_staging(self, tenant_id: str) -> None:
        """Drop the tenant's staging schema once its extract has loaded everything; dlt makes it
        again at the next load. Its tables hold nothing between loads, yet each is a row type in
        PostgreSQL's catalogue, which the ADBC driver reads whole as it connects: with every
        tenant's kept, a connect took 1.7 s at 508 tenants (60 ms with none), in every run."""
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self._staging_schema(tenant_id))))


def _drop_staging_made_for_records(database_url: str, staging: str) -> None:
    """A tenant's staging schema made before xero_source loaded Arrow tables holds JSON as jsonb,
    which ADBC's binary COPY cannot write (dlt makes such columns json now). The staging tables
    hold nothing between loads: the schema is dropped, and dlt makes it again at the next load."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The catalogue, not information_schema.columns: that view walks every tenant's staging
        # tables, so its cost grew with the fleet; this looks up one schema by its index.
        stale = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND a.atttypid = 'jsonb'::regtype AND NOT a.attisdropped LIMIT 1",
            (staging,)).fetchone()
        if stale:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(staging)))


def build_resources() -> dict[str, object]:
    from orchestration.run_health import RunLivenessResource

    return {
        "dlt": DagsterDltResource(),
        "dbt": DbtCliResource(project_dir=xero_dbt_project, dbt_executable=DBT_EXECUTABLE),
        "token_vault": TokenVaultResource(),
        "xero_pipeline": XeroPipelineResource(),
        "run_liveness": RunLivenessResource(),
    }
