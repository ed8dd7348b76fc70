"""The daily sync: one run per active tenant (dynamic partitions need a hand-written schedule)."""


import dagster as dg

from orchestration.jobs import tenant_sync_job
from orchestration.partitions import add_tenant_partitions
from orchestration.resources import TokenVaultResource


@dg.schedule(
    job=tenant_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night, sync every active Xero tenant.",
)
def daily_tenant_sync(context: dg.ScheduleEvaluationContext, token_vault: TokenVaultResource):
    tenants = [t.tenant_id for t in token_vault.get().active_tenants()]
    add_tenant_partitions(context.instance, tenants)
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for tenant_id in tenants:
        yield dg.RunRequest(run_key=f"{tenant_id}:{day}", partition_key=tenant_id)
