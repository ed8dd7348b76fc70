"""dbt models (staging, canonical invoices, metrics) as partitioned assets, one tenant per run."""


import json
import os
from collections.abc import Iterator

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from orchestration.dbt_project import ensure_manifest, xero_dbt_project
from orchestration.freshness import DAILY_SYNC_FRESHNESS
from orchestration.partitions import checked_tenant_id, tenant_partitions
from orchestration.resources import TokenVaultResource
from orchestration.settings import dbt_connection_env
from orchestration.tenant_lock import tenant_lock

ANALYTICS_GROUP = "analytics"


class XeroDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props) -> str | None:
        return ANALYTICS_GROUP

    def get_asset_spec(self, manifest, unique_id, project) -> dg.AssetSpec:
        return super().get_asset_spec(manifest, unique_id, project).replace_attributes(
            freshness_policy=DAILY_SYNC_FRESHNESS)


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
def analytics_models(context: dg.AssetExecutionContext, dbt: DbtCliResource,
                     token_vault: TokenVaultResource) -> Iterator:
    tenant_id = checked_tenant_id(context.partition_key)
    # dbt runs as a subprocess of whichever process runs this step: give it the pipeline's database.
    os.environ.update(dbt_connection_env())
    args = ["build", "--vars", json.dumps({"tenant_id": tenant_id})]
    # The lock is held while dbt runs, not across yields: a generator suspended at a yield (its
    # consumer failed) would keep the tenant locked until garbage collection.
    with tenant_lock(tenant_id):
        invocation = dbt.cli(args, context=context, raise_on_error=False)
        events = list(invocation.stream())
    yield from events
    if not invocation.is_successful():
        raise build_failure(tenant_id, invocation)
    # The tenant's analytics are now as fresh as its raw data: that is what "last sync" means
    # to the web app.
    token_vault.get().mark_synced(tenant_id)


def build_failure(tenant_id: str, invocation) -> Exception:
    """Data tests that ran and failed are a fact about the tenant's data: retrying in a minute
    cannot change them, so they fail the run for good, naming the tests. Anything else (a model or
    a test's own query that errored, a lost connection, dbt dying) may be transient and goes to the
    job's retry policy."""
    try:
        results = invocation.get_artifact("run_results.json").get("results", [])
    except FileNotFoundError:  # dbt died before writing it
        return RuntimeError(f"tenant {tenant_id}: dbt build failed: {invocation.get_error()}")
    problems = {r["unique_id"]: (r["status"], r.get("message")) for r in results
                if r["status"] in ("fail", "error")}
    failed_tests = sorted(uid for uid, (status, _) in problems.items()
                          if status == "fail" and uid.startswith("test."))
    if failed_tests and len(failed_tests) == len(problems):
        return dg.Failure(description=f"tenant {tenant_id}: dbt tests failed: {', '.join(failed_tests)}",
                          metadata={"tenant_id": tenant_id, "failed_tests": failed_tests},
                          allow_retries=False)
    details = "; ".join(f"{uid} {status}: {msg}" for uid, (status, msg) in sorted(problems.items()))
    return RuntimeError(f"tenant {tenant_id}: dbt build failed: {details}")
