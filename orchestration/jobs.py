"""The two jobs: a tenant's extract (dlt, one tenant partition per run), and the analytics build
(dbt, every tenant at once, set-based).

Both run in the run worker's own process (the in-process executor): a run is one process, whose
liveness lock (orchestration/run_health.py) and locks die with it, and no step pays a process start.
"""

from __future__ import annotations

import dagster as dg

SYNC_JOB_NAME = "xero_tenant_sync"
ANALYTICS_JOB_NAME = "xero_analytics"
SYNC_JOBS = {SYNC_JOB_NAME, ANALYTICS_JOB_NAME}

# Xero answers 429/5xx at times; the client retries requests, this retries a failed step.
_STEP_RETRIES = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                               jitter=dg.Jitter.PLUS_MINUS)

tenant_sync_job = dg.define_asset_job(
    name=SYNC_JOB_NAME,
    selection=dg.AssetSelection.groups("xero_raw").without_checks(),
    description="Extract one Xero tenant into raw_xero; the analytics build follows.",
    executor_def=dg.in_process_executor,
    op_retry_policy=_STEP_RETRIES,
    tags={"product": "xero-elt"},
)

analytics_job = dg.define_asset_job(
    name=ANALYTICS_JOB_NAME,
    selection=dg.AssetSelection.groups("analytics"),
    description="Build the dbt models from every raw load not processed yet, for every tenant at once.",
    executor_def=dg.in_process_executor,
    op_retry_policy=_STEP_RETRIES,
    tags={"product": "xero-elt", "xero-elt/job": "analytics"},
)


def sync_ops_config(full_refresh: bool) -> dict:
    """The extract job's op config: whether it re-reads everything (see XeroSyncConfig)."""
    return {"xero_raw": {"config": {"full_refresh": full_refresh}}}
