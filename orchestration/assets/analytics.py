"""dbt models (staging, canonical invoices, metrics) as assets: one set-based build for every tenant.

The models are incremental on the dlt loads that no successful build processed yet
(dbt_project/macros/load_batches.sql), so one `dbt build` brings every tenant whose raw data
changed up to date, at a cost that grows with the rows that changed. No tenant variable is passed:
dbt's partial parse stays valid from run to run. The assets are not partitioned: they follow every
tenant partition of the raw assets, and the analytics job runs after extracts (the CLI after its
tenants, the daemon's `analytics_after_extracts` sensor after any).
"""

import os
import shutil
from collections.abc import Iterator

import dagster as dg
import psycopg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets
from dagster_dbt.asset_utils import (
    DAGSTER_DBT_MANIFEST_METADATA_KEY,
    DAGSTER_DBT_PROJECT_METADATA_KEY,
    DAGSTER_DBT_TRANSLATOR_METADATA_KEY,
    DBT_DEFAULT_SELECT,
    get_subset_selection_for_context,
)
from dagster_dbt.dbt_manifest import validate_manifest
from psycopg import sql

from oauth_service.vault import TenantNotConnected
from orchestration.dbt_project import ensure_manifest, keep_partial_parse, xero_dbt_project
from orchestration.extract_ledger import database_now, publish_extracts
from orchestration.freshness import DAILY_SYNC_FRESHNESS
from orchestration.jobs import LAYER_OWNERS, LAYERS
from orchestration.kpi_trends import kpi_trends_markdown
from orchestration.locks import LockWaitTimeout, analytics_lock
from orchestration.resources import TokenVaultResource
from orchestration.run_health import RunLivenessResource
from orchestration.settings import dbt_connection_env

TABLE_NAME = "dagster/table_name"


class XeroDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props) -> str | None:
        """The schema: `staging`, or `analytics` for the marts (see orchestration/jobs.py); the web
        app's connections table, a dbt source, stands in group `app`."""
        return dbt_resource_props.get("schema")

    def get_owners(self, dbt_resource_props) -> list[str]:
        layer = LAYERS.get(self.get_group_name(dbt_resource_props))
        return LAYER_OWNERS[layer] if layer else []

    def get_tags(self, dbt_resource_props) -> dict[str, str]:
        layer = LAYERS.get(self.get_group_name(dbt_resource_props))
        return {**super().get_tags(dbt_resource_props), **({"layer": layer} if layer else {})}

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project) -> dg.AssetCheckSpec | None:
        """A dbt test as a check, saying in words what it holds (its own description, else its kind
        and column) and that it covers every tenant's rows: the build is set-based."""
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        test = manifest["nodes"].get(unique_id, {})
        kind = (test.get("test_metadata") or {}).get("name") or test.get("name", unique_id)
        column = test.get("column_name")
        said = test.get("description") or (f"dbt test `{kind}`" + (f" on `{column}`" if column else "")
                                           + f" of {asset_spec.key.to_user_string()}")
        return spec._replace(description=f"{said}; over every tenant's rows (one set-based build).")

    def get_asset_spec(self, manifest, unique_id, project) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest["nodes"].get(unique_id) or manifest["sources"].get(unique_id) or {}
        # `schema.table`, not dbt's `"database"."schema"."table"`: the definitions (and so the job's
        # snapshot, which "Re-execute" compares) stay the same whatever database a process builds.
        name = node.get("alias") or node.get("identifier") or node.get("name")
        table = f"{node['schema']}.{name}" if node else None
        # dagster-dbt keeps the manifest, the translator and the project as Python objects in every
        # model's metadata, for its own use at run time; the UI can only show them as
        # "(unserializable)". They stay out: analytics_models hands them to dbt itself.
        metadata = {k: v for k, v in spec.metadata.items() if k not in RUNTIME_ONLY_METADATA}
        return spec.replace_attributes(
            freshness_policy=DAILY_SYNC_FRESHNESS,
            metadata={**metadata, **({TABLE_NAME: table} if table else {})},
        )


RUNTIME_ONLY_METADATA = (DAGSTER_DBT_MANIFEST_METADATA_KEY, DAGSTER_DBT_TRANSLATOR_METADATA_KEY,
                         DAGSTER_DBT_PROJECT_METADATA_KEY)
MANIFEST = validate_manifest(ensure_manifest())
TRANSLATOR = XeroDbtTranslator(
    settings=DagsterDbtTranslatorSettings(enable_asset_checks=True, enable_source_tests_as_checks=False)
)


class AnalyticsBuildConfig(dg.Config):
    full_refresh: bool = False
    """Rebuild every model from all raw data (after a model change), instead of from pending loads."""


# dbt tests are checks of the models they test (TRANSLATOR). Source tests stay dbt's own (they run
# in every build): as checks of the tenant-partitioned raw assets they would pull the dbt step into
# each tenant's extract run.
@dbt_assets(manifest=MANIFEST, project=xero_dbt_project, dagster_dbt_translator=TRANSLATOR)
def analytics_models(context: dg.AssetExecutionContext, config: AnalyticsBuildConfig, dbt: DbtCliResource,
                     token_vault: TokenVaultResource, run_liveness: RunLivenessResource) -> Iterator:
    # dbt runs as a subprocess of whichever process runs this step: give it the pipeline's database.
    os.environ.update(dbt_connection_env())
    database_url = os.environ["DATABASE_URL"]
    args = ["build", *(["--full-refresh"] if config.full_refresh else [])]
    try:
        # One build at a time; held while dbt runs, not across yields (a generator suspended at a
        # yield, its consumer gone, would keep it until garbage collection).
        with analytics_lock(holder=f"xero-elt run {context.run.run_id} analytics", database_url=database_url,
                            announce=context.log.warning):
            built_from = database_now(database_url)
            invocation = dbt.cli([*args, *_selection(context)], manifest=MANIFEST,
                                 dagster_dbt_translator=TRANSLATOR, raise_on_error=False)
            events = [e for e in map(_as_result, invocation.stream()) if _was_asked_for(context, e)]
            keep_partial_parse(invocation.target_path)
    except LockWaitTimeout as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    if invocation.is_successful():
        events = _with_row_counts(context, events, database_url, _rows_changed(invocation))
        events = [_with_kpi_trends(e, database_url) for e in events]
    yield from events
    if not invocation.is_successful():
        raise build_failure(invocation)  # its target folder (dbt.log, run_results.json) stays
    # dagster-dbt gives every invocation a target folder of its own (≈ 3 MB) and leaves it: a
    # deployment building every few minutes would fill its disk.
    shutil.rmtree(invocation.target_path, ignore_errors=True)
    if context.selected_asset_keys != set(context.assets_def.node_keys_by_output_name.values()):
        # A model picked in the UI: the loads stay pending for the models it did not build
        # (macros/load_batches.sql), and no tenant's data is fresher for the web app.
        context.log.info("built a subset of the models: no tenant's sync is published")
        return
    # Every tenant whose extract finished before this build started is now as fresh as its raw
    # data: that is what "last sync" means to the web app.
    vault = token_vault.get()
    published = publish_extracts(database_url, built_from)
    for tenant_id in published:
        try:
            vault.mark_synced(tenant_id)
        except TenantNotConnected:
            context.log.info(f"tenant {tenant_id} was disconnected since its extract; last_sync not set")
    context.log.info(f"analytics published for {len(published)} tenant(s): {', '.join(published)}")


KPI_ASSET = dg.AssetKey(["analytics", "kpi_monthly"])


def _selection(context: dg.AssetExecutionContext) -> list[str]:
    """dbt's --select (and --indirect-selection) for the models and checks this step was asked
    for: the whole project, or the subset a person picked in the UI. dbt.cli is given the manifest
    and translator, not the context: with a context it looks for them in the assets' metadata,
    which leaves them out (RUNTIME_ONLY_METADATA)."""
    selection, indirect = get_subset_selection_for_context(
        context=context, manifest=MANIFEST, select=DBT_DEFAULT_SELECT, exclude=None, selector=None,
        dagster_dbt_translator=TRANSLATOR, current_dbt_indirect_selection_env=None)
    return [*selection, *(["--indirect-selection", indirect] if indirect else [])]


def _as_result(event):
    """dbt's events as this step's results. A model's result is a MaterializeResult, not an Output:
    the table is the result, and there is no value for an IO manager to store (nor a "Handled
    output" log line per model)."""
    if isinstance(event, dg.AssetMaterialization):
        return dg.MaterializeResult(asset_key=event.asset_key, metadata=event.metadata)
    if isinstance(event, dg.AssetCheckEvaluation):
        return dg.AssetCheckResult(asset_key=event.asset_key, check_name=event.check_name,
                                   passed=event.passed, severity=event.severity, metadata=event.metadata,
                                   description=event.description)
    return event


def _was_asked_for(context: dg.AssetExecutionContext, event) -> bool:
    """dbt's indirect selection runs tests of the selected models that the step was not asked
    for; their results are not this step's to report."""
    if isinstance(event, dg.MaterializeResult):
        return event.asset_key in context.selected_asset_keys
    if isinstance(event, dg.AssetCheckResult):
        return dg.AssetCheckKey(event.asset_key, event.check_name) in context.selected_asset_check_keys
    return True


def _rows_changed(invocation) -> dict[str, int]:
    """dbt's rows affected per model in this build (what its incremental merge inserted), by unique id."""
    results = invocation.get_artifact("run_results.json").get("results", [])
    return {r["unique_id"]: int(r["adapter_response"]["rows_affected"]) for r in results
            if (r.get("adapter_response") or {}).get("rows_affected") is not None}


def _with_row_counts(context: dg.AssetExecutionContext, events: list, database_url: str,
                     rows_changed: dict[str, int]) -> list:
    """Each table model's materialisation carries its rows after the build (dagster/row_count) and
    the rows this build wrote (dbt/rows_changed, dbt's rows affected). dagster-dbt's own
    fetch_row_counts cannot serve here: it names tables by the manifest's database, which is kept
    the same whatever database a process builds (XeroDbtTranslator)."""
    specs = context.assets_def.specs_by_key
    tables = {e.asset_key: specs[e.asset_key].metadata[TABLE_NAME]
              for e in events if isinstance(e, dg.MaterializeResult)}
    counts = {}
    with psycopg.connect(database_url) as conn:
        for key, table in tables.items():
            schema, name = table.split(".", 1)
            kind = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n "
                                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                                (schema, name)).fetchone()
            if kind and kind[0] in ("r", "p"):  # tables only: counting a view runs its query
                counts[key] = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]

    def counted(e: dg.MaterializeResult) -> dg.MaterializeResult:
        metadata = {**e.metadata, "dagster/row_count": dg.MetadataValue.int(counts[e.asset_key])}
        unique_id = getattr(e.metadata.get("unique_id"), "text", None)
        if unique_id in rows_changed:
            metadata["dbt/rows_changed"] = dg.MetadataValue.int(rows_changed[unique_id])
        return dg.MaterializeResult(asset_key=e.asset_key, metadata=metadata)

    return [counted(e) if isinstance(e, dg.MaterializeResult) and e.asset_key in counts else e
            for e in events]


def _with_kpi_trends(event, database_url: str):
    """The KPI asset's materialisation carries each tenant's trend (orchestration/kpi_trends.py)."""
    if not isinstance(event, dg.MaterializeResult) or event.asset_key != KPI_ASSET:
        return event
    trends = dg.MetadataValue.md(kpi_trends_markdown(database_url))
    return dg.MaterializeResult(asset_key=event.asset_key, metadata={**event.metadata, "kpi_trends": trends})


def build_failure(invocation) -> Exception:
    """Data tests that ran and failed are a fact about the data: retrying in a minute cannot change
    them, so they fail the run for good, naming the tests. Anything else (a model or a test's own
    query that errored, a lost connection, dbt dying) may be transient and goes to the job's retry
    policy."""
    try:
        results = invocation.get_artifact("run_results.json").get("results", [])
    except FileNotFoundError:  # dbt died before writing it
        return RuntimeError(f"dbt build failed: {invocation.get_error()}")
    problems = {r["unique_id"]: (r["status"], r.get("message")) for r in results
                if r["status"] in ("fail", "error")}
    failed_tests = sorted(uid for uid, (status, _) in problems.items()
                          if status == "fail" and uid.startswith("test."))
    if failed_tests and len(failed_tests) == len(problems):
        return dg.Failure(description=f"dbt tests failed: {', '.join(failed_tests)}",
                          metadata={"failed_tests": failed_tests}, allow_retries=False)
    details = "; ".join(f"{uid} {status}: {msg}" for uid, (status, msg) in sorted(problems.items()))
    return RuntimeError(f"dbt build failed: {details}")
