"""Sensors: tenants follow app.xero_connections; Xero webhooks start a tenant's sync; the
analytics build follows the extracts; crashed runs are reaped; every finished run is audited."""

import os

import dagster as dg

from oauth_service.events import mark_webhook_events_processed, pending_webhook_events
from orchestration.extract_ledger import pending_loads
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOBS, analytics_job, tenant_sync_job
from orchestration.partitions import add_tenant_partitions
from orchestration.resources import TokenVaultResource
from orchestration.run_audit import audit_run, failure_detail
from orchestration.run_health import reap_dead_runs

UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]


@dg.sensor(
    job=tenant_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds newly connected tenants as partitions and starts their first sync.",
)
def new_tenant_sensor(context: dg.SensorEvaluationContext, token_vault: TokenVaultResource):
    tenants = [t.tenant_id for t in token_vault.get().active_tenants()]
    new = add_tenant_partitions(context.instance, tenants)
    for tenant_id in new:
        yield dg.RunRequest(run_key=f"first-sync:{tenant_id}", partition_key=tenant_id)
    if not new:
        yield dg.SkipReason(f"{len(tenants)} active tenants, none new")


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
        yield dg.SkipReason("no new Xero webhook events")
        return
    active = {t.tenant_id for t in vault.active_tenants()}
    latest: dict[str, int] = {}
    for event in events:
        if event.tenant_id in active:
            latest[event.tenant_id] = max(latest.get(event.tenant_id, 0), event.id)
    add_tenant_partitions(context.instance, list(latest))
    # One run per tenant however many events arrived; the per-partition run limit queues it behind
    # a sync already in progress.
    for tenant_id, last_event in latest.items():
        yield dg.RunRequest(run_key=f"webhook:{tenant_id}:{last_event}", partition_key=tenant_id,
                            tags={"xero-elt/trigger": "webhook"})
    # Events of tenants no longer active are settled too: there is nothing to sync for them.
    mark_webhook_events_processed(vault.engine, [e.id for e in events])


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
        audit_run(context.dagster_run)

    return audit


audit_successful_runs = _audit_sensor(dg.DagsterRunStatus.SUCCESS, "audit_successful_runs")
audit_canceled_runs = _audit_sensor(dg.DagsterRunStatus.CANCELED, "audit_canceled_runs")


@dg.run_failure_sensor(
    monitored_jobs=[tenant_sync_job, analytics_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def audit_failed_runs(context: dg.RunFailureSensorContext):
    # Also sees runs whose process died: the code server, run monitoring or recover_crashed_runs
    # marks them FAILURE.
    run = context.dagster_run
    audit_run(run, detail=failure_detail(context.instance, run.run_id, context.failure_event.message))
