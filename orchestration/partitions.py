"""One Xero tenant = one Dagster dynamic partition, keyed by the Xero tenant id."""

from __future__ import annotations

import uuid

import dagster as dg

TENANT_PARTITIONS_NAME = "xero_tenants"
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
