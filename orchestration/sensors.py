"""Sensors: tenants follow app.xero_connections; every finished run is audited."""


import dagster as dg

from orchestration.jobs import tenant_sync_job
from orchestration.partitions import add_tenant_partitions
from orchestration.resources import TokenVaultResource
from orchestration.run_audit import audit_run


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


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[tenant_sync_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def audit_successful_runs(context: dg.RunStatusSensorContext):
    audit_run(context.dagster_run)


@dg.run_failure_sensor(
    monitored_jobs=[tenant_sync_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def audit_failed_runs(context: dg.RunFailureSensorContext):
    # Also sees runs whose process died: run monitoring marks them FAILURE.
    audit_run(context.dagster_run, detail={"error": (context.failure_event.message or "")[:500]})
