"""Sync tenants through Dagster: the code path of `xero-elt sync`, the demo and the tests.

First, runs whose worker died are marked failed (orchestration/run_health.py), so no crash holds
anything. Then each tenant's extract is one in-process run of the partitioned extract job, and one
run of the analytics job builds every tenant's changes at once (set-based dbt), on the configured
instance, so they show in the Dagster UI exactly like scheduled runs, and are audited like them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import dagster as dg
import psycopg

from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME, SYNC_JOBS, sync_ops_config
from orchestration.partitions import add_tenant_partitions, checked_tenant_id
from orchestration.run_audit import audit_run
from orchestration.run_health import reap_dead_runs
from orchestration.settings import ANALYTICS_SCHEMA, RAW_SCHEMA


@dataclass
class TenantSyncResult:
    tenant_id: str
    run_id: str  # the extract's run
    success: bool  # extracted, and the analytics build after it succeeded
    fetched: dict[str, int] = field(default_factory=dict)  # rows extracted this run, per raw table
    invoices: int = 0  # rows in analytics.invoices for the tenant after the run (every status)
    invoices_total: Decimal = Decimal(0)  # their amount, DELETED ones left out
    raw_invoice_versions: int = 0
    error: str | None = None
    analytics_run_id: str | None = None


def _run_error(result: dg.ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and err.message.startswith("dagster."):
                err = err.cause
            return f"step {event.step_key}: {err.message.strip()}"
    return None if result.success else "run failed"


def tenant_figures(database_url: str, tenant_id: str) -> tuple[int, Decimal, int]:
    """(invoices, the amount of those not deleted, raw invoice versions) for a tenant; zeros before
    the first load."""

    def first_row(conn: psycopg.Connection, query: str) -> tuple:
        try:
            return conn.execute(query, (tenant_id,)).fetchone()
        except psycopg.errors.UndefinedTable:  # nothing loaded yet
            conn.rollback()
            return (0, Decimal(0))

    with psycopg.connect(database_url) as conn:
        count, total = first_row(
            conn, "SELECT count(*), coalesce(sum(amount) FILTER (WHERE status <> 'DELETED'), 0) "  # noqa: S608
                  f"FROM {ANALYTICS_SCHEMA}.invoices WHERE tenant_id = %s")
        (raw, *_) = first_row(conn, f"SELECT count(*) FROM {RAW_SCHEMA}.invoices "  # noqa: S608
                                    f"WHERE tenant_id = %s")
    return count, total, raw


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, log_level: str, *,
             partition_key: str | None = None, ops: dict | None = None) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        partition_key=partition_key,
        instance=instance,
        raise_on_error=False,
        run_config={
            **({"ops": ops} if ops else {}),
            # The run's full log is on the instance (the UI); the terminal gets warnings and the summary.
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        tags={"xero-elt/launched-by": "xero-elt sync"},
    )


def sync_tenants(
    tenant_ids: Sequence[str] | None = None,
    *,
    full_refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "WARNING",
    progress: Callable[[str], None] | None = None,
) -> list[TenantSyncResult]:
    """Extract the given tenants (default: every active one), then build the analytics once."""
    from orchestration.definitions import defs
    from orchestration.resources import TokenVaultResource

    say = progress or (lambda _line: None)
    instance = instance or dg.DagsterInstance.get()
    for reaped in reap_dead_runs(instance, SYNC_JOBS, reaper="xero-elt sync"):
        say(f"run {reaped.run_id} ({reaped.job_name}"
            + (f", tenant {reaped.tenant_id}" if reaped.tenant_id else "")
            + f") marked failed: {reaped.reason}")
    if tenant_ids:
        targets = [checked_tenant_id(t) for t in tenant_ids]
    else:
        targets = [t.tenant_id for t in TokenVaultResource().get().active_tenants()]
    add_tenant_partitions(instance, targets)
    extract_job = defs.resolve_job_def(SYNC_JOB_NAME)
    database_url = os.environ["DATABASE_URL"]

    results = []
    for tenant_id in targets:
        run = _execute(extract_job, instance, log_level, partition_key=tenant_id,
                       ops=sync_ops_config(full_refresh))
        fetched = {}
        for mat in run.get_asset_materialization_events():
            key = mat.asset_key
            rows = mat.materialization.metadata.get("rows_loaded")
            if key and key.path[0] == RAW_SCHEMA:
                fetched[key.path[-1]] = int(rows.value) if rows is not None else 0
        audit_run(instance.get_run_by_id(run.run_id),
                  detail={"fetched": fetched, "full_refresh": full_refresh})
        result = TenantSyncResult(tenant_id, run.run_id, run.success, fetched, error=_run_error(run))
        say(f"{tenant_id}: extract {'ok' if run.success else 'FAILED'} (run {run.run_id})")
        results.append(result)

    if any(r.success for r in results):
        build = _execute(defs.resolve_job_def(ANALYTICS_JOB_NAME), instance, log_level)
        audit_run(instance.get_run_by_id(build.run_id), detail={"tenants": [r.tenant_id for r in results]})
        build_error = _run_error(build)
        say(f"analytics build {'ok' if build.success else 'FAILED'} (run {build.run_id})")
        for r in results:
            r.analytics_run_id = build.run_id
            if r.success and not build.success:
                r.success, r.error = False, f"analytics build: {build_error}"
    for r in results:
        r.invoices, r.invoices_total, r.raw_invoice_versions = tenant_figures(database_url, r.tenant_id)
    return results
