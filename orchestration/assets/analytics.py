"""dbt models (staging, canonical invoices, metrics) as partitioned assets, one tenant per run."""


import json
from collections.abc import Iterator

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from orchestration.dbt_project import ensure_manifest, xero_dbt_project
from orchestration.partitions import checked_tenant_id, tenant_partitions

ANALYTICS_GROUP = "analytics"


class XeroDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props) -> str | None:
        return ANALYTICS_GROUP


@dbt_assets(
    manifest=ensure_manifest(),
    project=xero_dbt_project,
    partitions_def=tenant_partitions,
    dagster_dbt_translator=XeroDbtTranslator(
        settings=DagsterDbtTranslatorSettings(enable_asset_checks=True, enable_source_tests_as_checks=True)
    ),
    # Models are tenant-incremental, but a model's first build and schema changes are whole-table
    # DDL: one dbt step at a time across runs (pool limit 1 in dagster.yaml).
    pool="dbt",
)
def analytics_models(context: dg.AssetExecutionContext, dbt: DbtCliResource) -> Iterator:
    tenant_id = checked_tenant_id(context.partition_key)
    args = ["build", "--vars", json.dumps({"tenant_id": tenant_id})]
    yield from dbt.cli(args, context=context).stream()
