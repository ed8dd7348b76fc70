"""The daily sync: one run per active tenant (dynamic partitions need a hand-written schedule).

Xero does not bump `UpdatedDateUTC` for every change, so incremental syncs can miss a silent edit;
once a week each tenant's run re-reads every record instead. The day is the tenant's own (from
its id), so a seventh of the fleet re-reads on any one day: the egress and the daily call budget
are spread over the week, not spent on Sunday. Time and time zone: XERO_SYNC_SCHEDULE and
XERO_SYNC_TIMEZONE (orchestration/settings.py).
"""

import uuid
from datetime import datetime

import dagster as dg

from orchestration.jobs import sync_ops_config, tenant_sync_job
from orchestration.partitions import add_tenant_partitions, tenant_tags
from orchestration.resources import TokenVaultResource
from orchestration.settings import sync_schedule

CRON, TIMEZONE = sync_schedule()


def full_refresh_weekday(tenant_id: str) -> int:
    """The day of the week (datetime.weekday()) on which the tenant's run re-reads everything."""
    return uuid.UUID(tenant_id).int % 7


def is_full_refresh(tenant_id: str, when: datetime) -> bool:
    return when.weekday() == full_refresh_weekday(tenant_id)


@dg.schedule(
    job=tenant_sync_job,
    cron_schedule=CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Syncs every active Xero tenant ({CRON}, {TIMEZONE}); once a week, on a day of the "
                "tenant's own, its run re-reads everything. Tenants that must reconnect are left out.",
)
def daily_tenant_sync(context: dg.ScheduleEvaluationContext, token_vault: TokenVaultResource):
    tenants = token_vault.get().active_tenants()
    add_tenant_partitions(context.instance, [t.tenant_id for t in tenants])
    when = context.scheduled_execution_time
    for tenant in tenants:
        full_refresh = is_full_refresh(tenant.tenant_id, when)
        yield dg.RunRequest(
            run_key=f"{tenant.tenant_id}:{when:%Y-%m-%dT%H:%M}",
            partition_key=tenant.tenant_id,
            run_config={"ops": sync_ops_config(full_refresh)},
            tags={"xero-elt/full_refresh": str(full_refresh).lower(),
                  **tenant_tags(tenant.tenant_id, tenant.tenant_name)},
        )
