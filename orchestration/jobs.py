"""The two jobs: a tenant's extract (dlt, one tenant partition per run), and the analytics build
(dbt, every tenant at once, set-based).

Both run in the run worker's own process (the in-process executor): a run is one process, whose
liveness lock (orchestration/run_health.py) and locks die with it, and no step pays a process start.
"""

from __future__ import annotations

import dagster as dg

from orchestration.settings import ANALYTICS_SCHEMA, RAW_SCHEMA

SYNC_JOB_NAME = "xero_tenant_sync"
ANALYTICS_JOB_NAME = "xero_analytics"
SYNC_JOBS = {SYNC_JOB_NAME, ANALYTICS_JOB_NAME}
# Each layer's assets form a group named after their schema (and key prefix): one name per layer.
RAW_GROUP = RAW_SCHEMA
STAGING_GROUP = "staging"
MARTS_GROUP = ANALYTICS_SCHEMA
LAYERS = {RAW_GROUP: "raw", STAGING_GROUP: "staging", MARTS_GROUP: "marts"}  # group → the `layer` tag
# Who answers for each layer (the UI's owners): the platform team for what mirrors Xero, the
# analytics engineers for the canonical table and the coaching metrics.
LAYER_OWNERS = {"raw": ["team:data-platform"], "staging": ["team:data-platform"],
                "marts": ["team:analytics-engineering"]}


def raw_asset_key(table: str) -> dg.AssetKey:
    """A raw table's asset: `raw_xero/xero_invoices` for `raw_xero.invoices`. The name differs from
    the canonical `analytics/invoices`, as the graph labels a node by its key's last part."""
    return dg.AssetKey([RAW_GROUP, f"xero_{table}"])


def raw_table(key: dg.AssetKey) -> str:
    """The table of a raw asset (raw_asset_key's inverse)."""
    return key.path[-1].removeprefix("xero_")


EXTRACT_OP_NAME = "extract_xero_tenant"  # the op that materialises them, one tenant per run

# Xero answers 429/5xx at times; the client retries requests, this retries a failed step.
_STEP_RETRIES = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                               jitter=dg.Jitter.PLUS_MINUS)

tenant_sync_job = dg.define_asset_job(
    name=SYNC_JOB_NAME,
    selection=dg.AssetSelection.groups(RAW_GROUP),  # with each tenant's data-quality checks
    description="Extract one Xero tenant into raw_xero; the analytics build follows.",
    executor_def=dg.in_process_executor,
    op_retry_policy=_STEP_RETRIES,
    tags={"product": "xero-elt"},
)

analytics_job = dg.define_asset_job(
    name=ANALYTICS_JOB_NAME,
    selection=dg.AssetSelection.groups(STAGING_GROUP, MARTS_GROUP),
    description="Build the dbt models from every raw load not processed yet, for every tenant at once.",
    executor_def=dg.in_process_executor,
    op_retry_policy=_STEP_RETRIES,
    tags={"product": "xero-elt", "xero-elt/job": "analytics"},
)


def sync_ops_config(full_refresh: bool) -> dict:
    """The extract job's op config: whether it re-reads everything (see XeroSyncConfig)."""
    return {EXTRACT_OP_NAME: {"config": {"full_refresh": full_refresh}}}
