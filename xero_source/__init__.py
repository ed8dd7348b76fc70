"""The Xero dlt source: one tenant's accounting records into the raw schema, incrementally.

    from xero_source import shared_postgres, xero_source
    source = xero_source(tenant_id, token_provider=vault_lookup, settings=SourceSettings(api_url=...))
    pipeline = dlt.pipeline(pipeline_name=f"xero_{tenant_id}", destination=shared_postgres(credentials),
                            dataset_name="raw_xero")
    pipeline.run(source)

Each row carries `tenant_id`; a record's versions are keyed by (tenant_id, id, updated_date_utc),
so re-fetching a version merges away and a changed record adds a new version. Nested arrays (line
items, payments, …) stay JSON columns (`max_table_nesting=0`). `shared_postgres` is dlt's PostgreSQL
destination for many tenants' pipelines loading one dataset (their schema changes made one at a time,
its connections kept from one load to the next until `release_kept_connections()`).
"""

from xero_source.client import EndpointStats, XeroClient
from xero_source.destination import release_kept_connections, shared_postgres
from xero_source.errors import DailyLimitExceeded, XeroApiError, XeroRequestRefused
from xero_source.pacing import AppBudget
from xero_source.settings import SourceSettings
from xero_source.source import ENDPOINTS, load_tenant, xero_source

__all__ = ["ENDPOINTS", "AppBudget", "DailyLimitExceeded", "EndpointStats", "SourceSettings", "XeroApiError",
           "XeroClient", "XeroRequestRefused", "load_tenant", "release_kept_connections", "shared_postgres",
           "xero_source"]
