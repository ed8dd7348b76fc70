"""One Xero tenant = one Dagster dynamic partition, keyed by the Xero tenant id."""

from __future__ import annotations

import uuid

import dagster as dg

TENANT_PARTITIONS_NAME = "xero_tenants"
TENANT_NAME_TAG = "xero-elt/tenant_name"  # beside dagster/partition (the id), for people
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANT_PARTITIONS_NAME)


def checked_tenant_id(partition_key: str) -> str:
    """Partition keys end up in pipeline names, schema names and SQL: accept Xero UUIDs only."""
    try:
        return str(uuid.UUID(partition_key))
    except ValueError:
        raise ValueError(f"partition key {partition_key!r} is not a Xero tenant id (a UUID)") from None


def add_tenant_partitions(instance: dg.DagsterInstance, tenant_ids: list[str]) -> list[str]:
    """Register tenants as partitions; return the ones that were new."""
    existing = set(instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    new = [checked_tenant_id(t) for t in tenant_ids if t not in existing]
    if new:
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, new)
    return new


def tenant_tags(tenant_id: str, tenant_name: str | None) -> dict[str, str]:
    """Tags that name a tenant's run for people (the runs list, a run's page, the audit)."""
    return {TENANT_NAME_TAG: tenant_name} if tenant_name else {}


def name_tenant(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Tag a tenant's run with the tenant's name, when whoever launched it did not."""
    tenant_id = run.tags.get("dagster/partition")
    if not tenant_id or TENANT_NAME_TAG in run.tags:
        return
    from orchestration.resources import TokenVaultResource

    tenant = TokenVaultResource().get().tenant(tenant_id)
    if tenant is not None and tenant.tenant_name:
        instance.add_run_tags(run.run_id, tenant_tags(tenant_id, tenant.tenant_name))
