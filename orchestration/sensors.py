"""Sensors: tenants follow app.xero_connections (new, paused, reconnected); Xero webhooks start a
tenant's sync; the
analytics build follows the extracts; crashed runs are reaped; every finished run is audited."""

import json
import os
from collections import Counter
from datetime import UTC, datetime

import dagster as dg

from oauth_service.events import mark_webhook_events_processed, pending_webhook_events
from orchestration.assets.xero_raw import RAW_ASSET_KEYS
from orchestration.extract_ledger import pending_loads
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOBS, analytics_job, tenant_sync_job
from orchestration.partitions import add_tenant_partitions, tenant_tags
from orchestration.resources import TokenVaultResource
from orchestration.run_audit import audit_run
from orchestration.run_health import reap_dead_runs
from orchestration.settings import webhook_quiet_seconds

UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]


@dg.sensor(
    job=tenant_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Follows app.xero_connections: a new tenant becomes a partition and is synced; a "
                "tenant that must reconnect or was disconnected is noted on its raw assets with the "
                "reason (the schedule leaves it out); a reconnected tenant is synced at once.",
)
def tenant_connections_sensor(context: dg.SensorEvaluationContext, token_vault: TokenVaultResource):
    tenants = token_vault.get().all_tenants()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}  # tenant -> status
    new = set(add_tenant_partitions(context.instance, [t.tenant_id for t in tenants if t.status == "active"]))
    runs, notes = [], []
    for t in tenants:
        before = seen.get(t.tenant_id)
        if t.tenant_id in new:
            runs.append(dg.RunRequest(run_key=f"first-sync:{t.tenant_id}", partition_key=t.tenant_id,
                                      tags=tenant_tags(t.tenant_id, t.tenant_name)))
        elif t.status == "active" and before not in (None, "active"):
            runs.append(dg.RunRequest(run_key=f"reconnected:{t.tenant_id}:{t.connected_at:%Y%m%dT%H%M%S%f}",
                                      partition_key=t.tenant_id,
                                      tags=tenant_tags(t.tenant_id, t.tenant_name)))
        if t.status != before and (before is not None or t.status != "active"):
            notes.extend(connection_notes(t))
    cursor = json.dumps({t.tenant_id: t.status for t in tenants}, sort_keys=True)
    if not runs and not notes:
        return dg.SensorResult(skip_reason=_tenant_counts(tenants), cursor=cursor)
    return dg.SensorResult(run_requests=runs, asset_events=notes, cursor=cursor)


def connection_notes(tenant) -> list[dg.AssetObservation]:
    """The tenant's connection status on each of its raw assets' partitions, where a person looks."""
    metadata = {"connection_status": tenant.status, "reason": tenant.status_reason or "",
                "tenant_name": tenant.tenant_name or "",
                "syncs": "scheduled" if tenant.status == "active" else "paused until the tenant reconnects"}
    return [dg.AssetObservation(asset_key=key, partition=tenant.tenant_id, metadata=metadata)
            for key in RAW_ASSET_KEYS]


def _tenant_counts(tenants) -> str:
    counts = Counter(t.status for t in tenants)
    return "no change: " + (", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                            or "no tenants")


@dg.sensor(
    job=tenant_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Syncs a tenant soon after Xero reports changes (webhooks stored by the OAuth service).",
)
def xero_webhook_sensor(context: dg.SensorEvaluationContext, token_vault: TokenVaultResource):
    vault = token_vault.get()
    events = pending_webhook_events(vault.engine)
    if not events:
        return dg.SkipReason("no new Xero webhook events")
    active = {t.tenant_id: t for t in vault.active_tenants()}
    quiet = webhook_quiet_seconds()
    now = datetime.now(UTC)
    by_tenant: dict[str, list] = {}
    for event in events:
        by_tenant.setdefault(event.tenant_id, []).append(event)
    # Xero sends changes in bursts (a batch of invoices, a bank feed): a tenant's run waits until
    # its events have been quiet for a while, so a burst across several ticks makes one run.
    ready = {t: evs for t, evs in by_tenant.items()
             if t not in active or (now - max(e.received_at for e in evs)).total_seconds() >= quiet}
    runs = [dg.RunRequest(run_key=f"webhook:{t}:{max(e.id for e in evs)}", partition_key=t,
                          tags={"xero-elt/trigger": "webhook", **tenant_tags(t, active[t].tenant_name)})
            for t, evs in ready.items() if t in active]
    add_tenant_partitions(context.instance, [r.partition_key for r in runs])
    # Events of tenants no longer active are settled too: there is nothing to sync for them. The
    # per-partition run limit queues a run behind a sync of the tenant already in progress.
    mark_webhook_events_processed(vault.engine, [e.id for evs in ready.values() for e in evs])
    waiting = len(by_tenant) - len(ready)
    if not runs:
        return dg.SkipReason(f"{waiting} tenant(s) with webhook events, waiting for {quiet} s of quiet")
    return dg.SensorResult(run_requests=runs)


@dg.sensor(
    job=analytics_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Builds the analytics (one dbt build, every tenant) when extracts left loads to process.",
)
def analytics_after_extracts(context: dg.SensorEvaluationContext):
    count, newest = pending_loads(os.environ["DATABASE_URL"])
    if not count:
        yield dg.SkipReason("no raw load waiting for the analytics build")
        return
    if context.instance.get_runs(dg.RunsFilter(job_name=ANALYTICS_JOB_NAME, statuses=UNFINISHED), limit=1):
        yield dg.SkipReason(f"{count} load(s) waiting; an analytics build is already queued or running")
        return
    # One build per newest load: the build takes every pending load, whatever arrived since.
    yield dg.RunRequest(run_key=f"analytics:{newest}", tags={"xero-elt/pending_loads": str(count)})


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed (and audits) sync runs whose worker died, so nothing waits for them.",
)
def recover_crashed_runs(context: dg.SensorEvaluationContext):
    reaped = reap_dead_runs(context.instance, SYNC_JOBS, reaper="the recover_crashed_runs sensor")
    for run in reaped:
        context.log.warning(f"run {run.run_id} ({run.job_name}, tenant {run.tenant_id}): {run.reason}")
    return dg.SkipReason(f"{len(reaped)} crashed run(s) marked failed" if reaped else "no crashed run")


def _audit_sensor(status: dg.DagsterRunStatus, name: str) -> dg.SensorDefinition:
    """Audits every sync run that ends with `status` (runs of `xero-elt sync` are audited by it too:
    a run is recorded once per status, whichever writer comes first)."""

    @dg.run_status_sensor(
        name=name, run_status=status, monitored_jobs=[tenant_sync_job, analytics_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Writes an app.audit_log row for each sync run that ends {status.value}.")
    def audit(context: dg.RunStatusSensorContext):
        audit_run(context.instance, context.dagster_run)

    return audit


audit_successful_runs = _audit_sensor(dg.DagsterRunStatus.SUCCESS, "audit_successful_runs")
audit_canceled_runs = _audit_sensor(dg.DagsterRunStatus.CANCELED, "audit_canceled_runs")


@dg.run_failure_sensor(
    monitored_jobs=[tenant_sync_job, analytics_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes an app.audit_log row, with the error, for each sync run that fails or whose "
                "process died.",
)
def audit_failed_runs(context: dg.RunFailureSensorContext):
    # Also sees runs whose process died: the code server, run monitoring or recover_crashed_runs
    # marks them FAILURE.
    audit_run(context.instance, context.dagster_run)
