"""The tenant sync job: raw extract (dlt) then dbt, one tenant (partition) per run.

Its partitioning (tenants) comes from the selected assets."""

from __future__ import annotations

import dagster as dg

SYNC_JOB_NAME = "xero_tenant_sync"

tenant_sync_job = dg.define_asset_job(
    name=SYNC_JOB_NAME,
    selection=dg.AssetSelection.groups("xero_raw", "analytics"),
    description="Extract one Xero tenant into raw_xero, then build its analytics models.",
    # Xero answers 429/5xx at times; the client retries requests, this retries a failed step.
    op_retry_policy=dg.RetryPolicy(
        max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    tags={"product": "xero-elt"},
)


def sync_ops_config(full_refresh: bool) -> dict:
    """The job's op config: whether the raw step re-reads everything (see XeroSyncConfig)."""
    return {"xero_raw": {"config": {"full_refresh": full_refresh}}}
