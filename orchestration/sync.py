"""Sync tenants through Dagster: the code path of `xero-elt sync`, the demo and the tests.

Each tenant is one in-process run of the partitioned sync job on the configured instance, so it
shows in the Dagster UI exactly like a scheduled run, and is audited like one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import dagster as dg
import psycopg

from orchestration.jobs import SYNC_JOB_NAME, sync_ops_config
from orchestration.partitions import add_tenant_partitions, checked_tenant_id
from orchestration.run_audit import audit_run
from orchestration.settings import ANALYTICS_SCHEMA, RAW_SCHEMA


@dataclass
class TenantSyncResult:
    tenant_id: str
    run_id: str
    success: bool
    fetched: dict[str, int] = field(default_factory=dict)  # rows extracted this run, per raw table
    invoices: int = 0  # rows in analytics.invoices for the tenant after the run
    invoices_total: Decimal = Decimal(0)
    raw_invoice_versions: int = 0
    error: str | None = None


def _run_error(result: dg.ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and err.message.startswith("dagster."):
                err = err.cause
            return f"step {event.step_key}: {err.message.strip()}"
    return None if result.success else "run failed"


def tenant_figures(database_url: str, tenant_id: str) -> tuple[int, Decimal, int]:
    """(invoices, their total, raw invoice versions) for a tenant; zeros before the first load."""

    def first_row(conn: psycopg.Connection, query: str) -> tuple:
        try:
            return conn.execute(query, (tenant_id,)).fetchone()
        except psycopg.errors.UndefinedTable:  # nothing loaded yet
            conn.rollback()
            return (0, Decimal(0))

    with psycopg.connect(database_url) as conn:
        count, total = first_row(conn, f"SELECT count(*), coalesce(sum(total), 0) "  # noqa: S608
                                       f"FROM {ANALYTICS_SCHEMA}.invoices WHERE tenant_id = %s")
        (raw, *_) = first_row(conn, f"SELECT count(*) FROM {RAW_SCHEMA}.invoices "  # noqa: S608
                                    f"WHERE tenant_id = %s")
    return count, total, raw


def sync_tenants(
    tenant_ids: Sequence[str] | None = None,
    *,
    full_refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "WARNING",
) -> list[TenantSyncResult]:
    """Materialise raw + dbt assets for the given tenants (default: every active one)."""
    from orchestration.definitions import defs
    from orchestration.resources import TokenVaultResource

    instance = instance or dg.DagsterInstance.get()
    if tenant_ids:
        targets = [checked_tenant_id(t) for t in tenant_ids]
    else:
        targets = [t.tenant_id for t in TokenVaultResource().get().active_tenants()]
    add_tenant_partitions(instance, targets)
    job = defs.resolve_job_def(SYNC_JOB_NAME)
    database_url = os.environ["DATABASE_URL"]

    results = []
    for tenant_id in targets:
        run = job.execute_in_process(
            partition_key=tenant_id,
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": sync_ops_config(full_refresh),
                # The run's full log is on the instance (the UI); the terminal gets the summary.
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            tags={"xero-elt/launched-by": "xero-elt sync"},
        )
        fetched = {}
        for mat in run.get_asset_materialization_events():
            key = mat.asset_key
            rows = mat.materialization.metadata.get("rows_loaded")
            if key and key.path[0] == RAW_SCHEMA:
                fetched[key.path[-1]] = int(rows.value) if rows is not None else 0
        error = _run_error(run)
        audit_run(instance.get_run_by_id(run.run_id),
                  detail={"fetched": fetched, "full_refresh": full_refresh})
        count, total, raw = tenant_figures(database_url, tenant_id)
        results.append(
            TenantSyncResult(tenant_id, run.run_id, run.success, fetched, count, total, raw, error))
    return results
