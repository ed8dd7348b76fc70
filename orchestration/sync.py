"""Sync tenants through Dagster: the code path of `xero-elt sync`, the demo and the tests.

First, runs whose worker died are marked failed (orchestration/run_health.py), so no crash holds
anything. Then each tenant's extract is one run of the partitioned extract job, several tenants at
a time (worker processes, `concurrency`), and one run of the analytics job builds every tenant's
changes at once (set-based dbt). All on the configured instance, so they show in the Dagster UI
exactly like scheduled runs, and are audited like them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from decimal import Decimal

import dagster as dg
import psycopg
from dagster._core.instance.ref import InstanceRef

from orchestration.instance_storage import keep_storage_connections
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME, SYNC_JOBS, raw_table, sync_ops_config
from orchestration.lifetime import die_with_parent
from orchestration.partitions import add_tenant_partitions, checked_tenant_id
from orchestration.run_audit import audit_run
from orchestration.run_health import live_in_process_run, reap_dead_runs
from orchestration.settings import ANALYTICS_SCHEMA, RAW_SCHEMA, sync_concurrency
from xero_source import release_kept_connections


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
    tenant_name: str | None = None
    seconds: float = 0.0  # the extract run's wall time


def _run_error(result: dg.ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and err.message.startswith("dagster."):
                err = err.cause
            return f"step {event.step_key}: {err.message.strip()}"
    return None if result.success else "run failed"


def tenant_figures(database_url: str, tenant_ids: Sequence[str]) -> dict[str, tuple[int, Decimal, int]]:
    """Per tenant: (invoices, the amount of those not deleted, raw invoice versions); zeros before
    the first load. One query per table for every tenant: a fleet's summary costs no more than one."""
    figures = {t: (0, Decimal(0), 0) for t in tenant_ids}

    def rows(conn: psycopg.Connection, query: str) -> list[tuple]:
        try:
            return conn.execute(query, (list(tenant_ids),)).fetchall()
        except psycopg.errors.UndefinedTable:  # nothing loaded yet
            conn.rollback()
            return []

    with psycopg.connect(database_url) as conn:
        for tenant_id, count, total in rows(
                conn, "SELECT tenant_id, count(*), "  # noqa: S608 - fixed names
                      "coalesce(sum(amount) FILTER (WHERE status <> 'DELETED'), 0) "
                      f"FROM {ANALYTICS_SCHEMA}.invoices WHERE tenant_id = ANY(%s) GROUP BY tenant_id"):
            figures[tenant_id] = (count, total, 0)
        for tenant_id, raw in rows(conn, f"SELECT tenant_id, count(*) FROM {RAW_SCHEMA}.invoices "  # noqa: S608
                                         "WHERE tenant_id = ANY(%s) GROUP BY tenant_id"):
            count, total, _ = figures[tenant_id]
            figures[tenant_id] = (count, total, raw)
    return figures


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, log_level: str, *,
             partition_key: str | None = None, ops: dict | None = None) -> dg.ExecuteInProcessResult:
    with live_in_process_run(os.environ["DATABASE_URL"]) as (run_id, liveness):
        return job.execute_in_process(
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            run_id=run_id,
            run_config={
                **({"ops": ops} if ops else {}),
                # The run's full log is on the instance (the UI); the terminal gets warnings and the summary.
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            tags={"xero-elt/launched-by": "xero-elt sync", **liveness},
        )


def _extract(job: dg.JobDefinition, instance: dg.DagsterInstance, tenant_id: str, full_refresh: bool,
             log_level: str) -> TenantSyncResult:
    """One tenant's extract run, audited."""
    started = time.monotonic()
    run = _execute(job, instance, log_level, partition_key=tenant_id, ops=sync_ops_config(full_refresh))
    fetched = {}
    for mat in run.get_asset_materialization_events():
        key = mat.asset_key
        rows = mat.materialization.metadata.get("rows_loaded")
        if key and key.path[0] == RAW_SCHEMA:
            fetched[raw_table(key)] = int(rows.value) if rows is not None else 0
    audit_run(instance, instance.get_run_by_id(run.run_id),
              detail={"fetched": fetched, "full_refresh": full_refresh})
    return TenantSyncResult(tenant_id, run.run_id, run.success, fetched, error=_run_error(run),
                            seconds=time.monotonic() - started)


# -- worker processes: each loads the definitions once, then extracts tenant after tenant ------------

_worker: dict = {}


def _worker_start(parent_pid: int, instance_ref: InstanceRef, log_level: str) -> None:
    from orchestration.definitions import defs

    die_with_parent(parent_pid)  # a killed sync leaves no extract running behind the reaper's back

    instance = dg.DagsterInstance.from_ref(instance_ref)
    keep_storage_connections(instance)  # a worker executes run after run
    _worker.update(instance=instance, log_level=log_level, job=defs.resolve_job_def(SYNC_JOB_NAME))


def _worker_extract(tenant_id: str, full_refresh: bool) -> TenantSyncResult:
    return _extract(_worker["job"], _worker["instance"], tenant_id, full_refresh, _worker["log_level"])


def _extract_all(targets: Sequence[str], instance: dg.DagsterInstance, full_refresh: bool, log_level: str,
                 concurrency: int) -> Iterator[TenantSyncResult]:
    """Each tenant's extract, as they finish; `concurrency` at a time."""
    from orchestration.definitions import defs

    if concurrency <= 1 or len(targets) <= 1:
        job = defs.resolve_job_def(SYNC_JOB_NAME)
        for tenant_id in targets:
            yield _extract(job, instance, tenant_id, full_refresh, log_level)
        return
    # Processes, not threads: a run worker per process, as the daemon launches them, and dlt's
    # normalisation gets a core of its own. Spawned, so no parent state (connections, locks) leaks in.
    with ProcessPoolExecutor(max_workers=min(concurrency, len(targets)),
                             mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start,
                             initargs=(os.getpid(), instance.get_ref(), log_level)) as pool:
        futures = {pool.submit(_worker_extract, tenant_id, full_refresh): tenant_id for tenant_id in targets}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # the worker process itself died (e.g. killed)
                yield TenantSyncResult(futures[future], "", False, error=f"extract worker failed: {exc!r}")


def sync_tenants(
    tenant_ids: Sequence[str] | None = None,
    *,
    full_refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "WARNING",
    progress: Callable[[str], None] | None = None,
    concurrency: int | None = None,
) -> list[TenantSyncResult]:
    """Extract the given tenants (default: every active one), `concurrency` at a time (default:
    XERO_SYNC_CONCURRENCY), then build the analytics once."""
    from orchestration.definitions import defs
    from orchestration.resources import TokenVaultResource

    say = progress or (lambda _line: None)
    instance = instance or dg.DagsterInstance.get()
    keep_storage_connections(instance)  # it may execute the extracts itself, and the build
    for reaped in reap_dead_runs(instance, SYNC_JOBS, reaper="xero-elt sync"):
        say(f"run {reaped.run_id} ({reaped.job_name}"
            + (f", tenant {reaped.tenant_id}" if reaped.tenant_id else "")
            + f") marked failed: {reaped.reason}")
    vault = TokenVaultResource().get()
    if tenant_ids:
        targets = [checked_tenant_id(t) for t in tenant_ids]
        names = {t: (info.tenant_name if (info := vault.tenant(t)) else None) for t in targets}
    else:
        active = vault.active_tenants()
        targets = [t.tenant_id for t in active]
        names = {t.tenant_id: t.tenant_name for t in active}
    add_tenant_partitions(instance, targets)
    database_url = os.environ["DATABASE_URL"]
    concurrency = sync_concurrency(concurrency)
    if targets:
        say(f"extracting {len(targets)} tenant(s), {min(concurrency, len(targets))} at a time")

    results = []
    for result in _extract_all(targets, instance, full_refresh, log_level, concurrency):
        result.tenant_name = names.get(result.tenant_id)
        label = f"{result.tenant_id} ({result.tenant_name})" if result.tenant_name else result.tenant_id
        fetched = sum(result.fetched.values())
        say(f"[{len(results) + 1}/{len(targets)}] {label}: extract "
            + (f"ok, {fetched:,} records" if result.success else "FAILED")
            + f" in {result.seconds:.1f} s (run {result.run_id})")
        results.append(result)
    order = {t: i for i, t in enumerate(targets)}
    results.sort(key=lambda r: order[r.tenant_id])

    if any(r.success for r in results):
        say("analytics build (every tenant's changes at once)")
        build = _execute(defs.resolve_job_def(ANALYTICS_JOB_NAME), instance, log_level)
        audit_run(instance, instance.get_run_by_id(build.run_id),
                  detail={"tenants": [r.tenant_id for r in results]})
        build_error = _run_error(build)
        say(f"analytics build {'ok' if build.success else f'FAILED: {build_error}'} (run {build.run_id})")
        for r in results:
            r.analytics_run_id = build.run_id
            if r.success and not build.success:
                r.success, r.error = False, f"analytics build: {build_error}"
    figures = tenant_figures(database_url, [r.tenant_id for r in results])
    for r in results:
        r.invoices, r.invoices_total, r.raw_invoice_versions = figures[r.tenant_id]
    release_kept_connections()  # this process may have extracted tenants itself (concurrency 1)
    return results
