"""The daily sync: one run per active tenant (dynamic partitions need a hand-written schedule).

Xero does not bump `UpdatedDateUTC` for every change, so incremental syncs can miss a silent edit;
once a week (Sunday) the schedule's runs re-read every record instead. That costs a tenant's full
data egress once a week, against seven incremental reads.
"""


import dagster as dg

from orchestration.jobs import sync_ops_config, tenant_sync_job
from orchestration.partitions import add_tenant_partitions
from orchestration.resources import TokenVaultResource

FULL_REFRESH_WEEKDAY = 6  # Sunday (datetime.weekday())


@dg.schedule(
    job=tenant_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night, sync every active Xero tenant; on Sundays, re-read everything.",
)
def daily_tenant_sync(context: dg.ScheduleEvaluationContext, token_vault: TokenVaultResource):
    tenants = [t.tenant_id for t in token_vault.get().active_tenants()]
    add_tenant_partitions(context.instance, tenants)
    when = context.scheduled_execution_time
    full_refresh = when.weekday() == FULL_REFRESH_WEEKDAY
    for tenant_id in tenants:
        yield dg.RunRequest(
            run_key=f"{tenant_id}:{when:%Y-%m-%d}",
            partition_key=tenant_id,
            run_config={"ops": sync_ops_config(full_refresh)},
            tags={"xero-elt/full_refresh": str(full_refresh).lower()},
        )
