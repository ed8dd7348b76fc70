"""Raw Xero records per tenant, loaded by dlt into `raw_xero` (one asset per Xero endpoint)."""


import os
import tempfile
import warnings
from collections.abc import Iterator

import dagster as dg
import dlt as dlt_lib
import psycopg
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, build_dlt_asset_specs
from dagster_dlt.translator import DltResourceTranslatorData
from psycopg import sql

from oauth_service.vault import ReauthRequired, TenantNotConnected
from orchestration.extract_ledger import record_extract
from orchestration.freshness import DAILY_SYNC_FRESHNESS
from orchestration.jobs import EXTRACT_OP_NAME, LAYER_OWNERS, LAYERS, RAW_GROUP, raw_asset_key, raw_table
from orchestration.locks import LockWaitTimeout, tenant_lock
from orchestration.partitions import checked_tenant_id, tenant_partitions
from orchestration.resources import TokenVaultResource, XeroPipelineResource
from orchestration.run_health import RunLivenessResource
from orchestration.settings import RAW_SCHEMA, DatabaseUrl, app_minute_limit
from orchestration.xero_budget import PostgresAppBudget
from xero_source import (
    ENDPOINTS,
    DailyLimitExceeded,
    EndpointStats,
    SourceSettings,
    XeroClient,
    XeroRequestRefused,
    load_tenant,
    xero_source,
)
from xero_source.source import QUARANTINE_TABLE

PERMANENT_ERRORS = (ReauthRequired, TenantNotConnected, DailyLimitExceeded, XeroRequestRefused,
                    LockWaitTimeout)
TEMPLATE_TENANT = "00000000-0000-0000-0000-000000000000"
TABLE_NAME = "dagster/table_name"  # Dagster's key for an asset's table (the UI shows it)


class XeroDltTranslator(DagsterDltTranslator):
    def get_asset_spec(self, data: DltResourceTranslatorData) -> dg.AssetSpec:
        spec = super().get_asset_spec(data)
        return spec.replace_attributes(
            key=raw_asset_key(data.resource.name),
            deps=[],  # Xero itself is not an asset here
            group_name=RAW_GROUP,
            owners=LAYER_OWNERS[LAYERS[RAW_GROUP]],
            tags={**spec.tags, "layer": LAYERS[RAW_GROUP]},
            freshness_policy=DAILY_SYNC_FRESHNESS,
            description=f"Xero {data.resource.name}, one row per fetched record version, per tenant.",
            # dlt would say `<destination type>.<dataset>.<table>`; each materialisation names the
            # database too (extract_result).
            metadata={**spec.metadata, TABLE_NAME: f"{RAW_SCHEMA}.{data.resource.name}"},
        )


class XeroSyncConfig(dg.Config):
    full_refresh: bool = False
    """Re-read every record instead of only those modified since the last sync (Xero does not
    bump UpdatedDateUTC for every change, so a periodic full re-sync keeps the raw data exact)."""


# The decorator needs a source and pipeline to derive the asset specs; each run builds the real,
# per-tenant ones (see XeroPipelineResource). dlt creates a pipeline's working folder when it is
# built, and processes that import these definitions at the same moment (webserver and daemon, two
# `xero-elt sync`) raced on a shared one: the template gets a folder of this process's own.
_template_dir = tempfile.TemporaryDirectory(prefix="xero-elt-dlt-template-")
_template_pipeline = dlt_lib.pipeline(pipeline_name="xero_template", destination="postgres",
                                      dataset_name=RAW_SCHEMA, pipelines_dir=_template_dir.name)


def _without_dlt_objects(spec: dg.AssetSpec) -> dg.AssetSpec:
    """dagster-dlt stores the template source, pipeline and translator in each spec's metadata, for
    its own lookup when `dlt.run` is not given them. Ours always are, and the UI showed those
    objects as "(unserializable)"."""
    return spec.replace_attributes(
        metadata={k: v for k, v in spec.metadata.items() if not k.startswith("dagster_dlt/")})


_RAW_SPECS = [_without_dlt_objects(spec) for spec in build_dlt_asset_specs(
    dlt_source=xero_source(TEMPLATE_TENANT, token_provider=lambda: ""),
    dlt_pipeline=_template_pipeline,
    dagster_dlt_translator=XeroDltTranslator(),
)]

# Data quality per tenant: a check partitioned like its asset, evaluated by each tenant's extract
# for that tenant. One tenant's failure stays on its partition until its own next extract passes,
# whatever other tenants' runs report (an unpartitioned check would show only the latest run's).
# Partitioned checks are a preview in Dagster 1.13 (pinned <1.14): chosen knowingly, see ARCHITECTURE.md.
QUARANTINE_CHECK = "no_quarantined_records"
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    QUARANTINE_CHECKS = [
        dg.AssetCheckSpec(
            QUARANTINE_CHECK, asset=spec.key, partitions_def=tenant_partitions,
            description=(f"Every {raw_table(spec.key)} record Xero sent for the tenant could be typed and "
                         f"loaded: none of them waits in {RAW_SCHEMA}.{QUARANTINE_TABLE}. A record's next "
                         "clean version takes it out, and the check passes again."))
        for spec in _RAW_SPECS]


# What @dlt_assets builds, minus the unserializable metadata, with the checks.
@dg.multi_asset(
    name=EXTRACT_OP_NAME,
    specs=_RAW_SPECS,
    check_specs=QUARANTINE_CHECKS,
    partitions_def=tenant_partitions,
    can_subset=True,
)
def xero_raw_assets(
    context: dg.AssetExecutionContext,
    config: XeroSyncConfig,
    dlt: DagsterDltResource,
    token_vault: TokenVaultResource,
    xero_pipeline: XeroPipelineResource,
    run_liveness: RunLivenessResource,
) -> Iterator:
    vault = token_vault.get()
    tenant_id = connected_tenant_id(context.partition_key, vault)
    database_url = os.environ["DATABASE_URL"]
    settings = SourceSettings.from_env()
    app_budget = PostgresAppBudget(database_url, app_minute_limit(), settings.rate_window_seconds)
    client = xero_pipeline.client(tenant_id, vault, app_budget)
    try:
        # Held while dlt runs, not across yields (see analytics_models).
        with tenant_lock(tenant_id, holder=f"xero-elt run {context.run.run_id} extract",
                         database_url=database_url, announce=context.log.warning):
            pipeline = xero_pipeline.pipeline(tenant_id)
            results = list(dlt.run(
                context=context,
                dlt_source=xero_pipeline.source(client, full_refresh=config.full_refresh),
                dlt_pipeline=pipeline,
                dagster_dlt_translator=XeroDltTranslator(),
            ))
            # Resources with more than a chunk to read go on, one load per chunk, each committing
            # its rows and cursor: a crash or a retry resumes after the last chunk that landed.
            more_rows = (load_tenant(pipeline, client, full_refresh=config.full_refresh,
                                     resources=sorted(client.unfinished)) if client.unfinished else {})
            record_extract(database_url, tenant_id, context.run.run_id)
            xero_pipeline.release_staging(tenant_id)
    except Exception as exc:
        permanent = permanent_cause(exc)
        if permanent is None:
            raise  # transient: the job's retry policy tries again
        raise dg.Failure(
            description=f"tenant {tenant_id}: {permanent}",
            metadata={"tenant_id": tenant_id, "reason": type(permanent).__name__},
            allow_retries=False,
        ) from exc
    finally:
        app_budget.close()
    tenant = vault.tenant(tenant_id)
    database = DatabaseUrl.parse(database_url).database
    traffic = [f"{path} {st.calls} call(s), {st.bytes:,} bytes, {st.rate_limited} 429(s), "
               f"{st.retries} retries, {st.quarantined} quarantined, minute/day limit left "
               f"{st.minute_limit_left}/{st.day_limit_left}" for path, st in client.stats.items()]
    context.log.info(f"tenant {tenant_id} ({tenant.tenant_name if tenant else '?'}): Xero traffic "
                     + "; ".join(traffic))
    waiting = quarantined_records(database_url, tenant_id)
    row_counts = tenant_row_counts(database_url, tenant_id, [raw_table(r.asset_key) for r in results])
    for result in results:
        yield extract_result(result, client, tenant_id, tenant.tenant_name if tenant else None, database,
                             more_rows.get(raw_table(result.asset_key), 0), row_counts)
        if context.selected_asset_check_keys and any(
                k.asset_key == result.asset_key for k in context.selected_asset_check_keys):
            yield quarantine_check(result.asset_key, tenant_id, tenant.tenant_name if tenant else None,
                                   waiting.get(ENDPOINTS[raw_table(result.asset_key)].path, []))


def tenant_row_counts(database_url: str, tenant_id: str, tables: list[str]) -> dict[str, int]:
    """The tenant's rows (every fetched version) in each raw table now: its partition's size.
    One indexed count per table (tenant_id leads the raw tables' index, macros/load_batches.sql)."""
    with psycopg.connect(database_url) as conn:
        existing = {t for (t,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s)", (RAW_SCHEMA, tables))}
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                    sql.Identifier(RAW_SCHEMA, t)), (tenant_id,)).fetchone()[0] if t in existing else 0
                for t in tables}


def quarantined_records(database_url: str, tenant_id: str) -> dict[str, list[tuple[str, str]]]:
    """The tenant's records in quarantine now, per Xero endpoint: (record key, reason)."""
    waiting: dict[str, list[tuple[str, str]]] = {}
    with psycopg.connect(database_url) as conn:
        try:
            rows = conn.execute(
                sql.SQL("SELECT endpoint, record_key, reason FROM {} WHERE tenant_id = %s "
                        "ORDER BY endpoint, record_key").format(sql.Identifier(RAW_SCHEMA, QUARANTINE_TABLE)),
                (tenant_id,)).fetchall()
        except psycopg.errors.UndefinedTable:  # nothing was ever quarantined
            return waiting
    for endpoint, record_key, reason in rows:
        waiting.setdefault(endpoint, []).append((record_key, reason))
    return waiting


def quarantine_check(asset_key: dg.AssetKey, tenant_id: str, tenant_name: str | None,
                     waiting: list[tuple[str, str]]) -> dg.AssetCheckResult:
    """The tenant's `no_quarantined_records` result for one raw table, naming what waits and why."""
    shown = waiting[:20]
    return dg.AssetCheckResult(
        asset_key=asset_key, check_name=QUARANTINE_CHECK, passed=not waiting,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{tenant_name or tenant_id}: " + (
            f"{len(waiting)} record(s) in quarantine" if waiting else "no record in quarantine")),
        metadata={
            "tenant_id": tenant_id,
            "tenant_name": tenant_name or "",
            "quarantined": dg.MetadataValue.int(len(waiting)),
            **({"records": dg.MetadataValue.md("\n".join(f"- `{key}`: {reason}" for key, reason in shown)
                                               + ("\n- …" if len(waiting) > len(shown) else ""))}
               if waiting else {}),
        },
    )


def connected_tenant_id(partition_key: str, vault) -> str:
    """The partition's tenant, refused before any work (no lock, no call to Xero) when the key is
    not a tenant id or has no connection, e.g. one made up in the UI's "Add partition". Not
    retried: only connecting the organisation can fix it. The run's failure is audited."""
    try:
        tenant_id = checked_tenant_id(partition_key)
        tenant = vault.tenant(tenant_id)
        if tenant is None or tenant.status == "disconnected":
            raise TenantNotConnected(f"Xero tenant {tenant_id} is not connected: connect it in the app first",
                                     tenant_id)
    except (ValueError, TenantNotConnected) as exc:
        raise dg.Failure(description=f"partition {partition_key!r} refused before any extract: {exc}",
                         metadata={"partition": partition_key, "reason": "not a connected tenant"},
                         allow_retries=False) from None
    return tenant_id


def extract_result(result: dg.MaterializeResult, client: XeroClient, tenant_id: str,
                   tenant_name: str | None, database: str, later_chunks_rows: int,
                   row_counts: dict[str, int]) -> dg.MaterializeResult:
    """dagster-dlt's materialisation (of the first chunk), made true and useful: the tenant's name,
    the rows loaded by every chunk (0 too), the tenant's rows in the table now, the table as
    `<database>.raw_xero.<t>` on every tenant's (dlt names its destination type, and only when rows
    were loaded), and the endpoint's Xero traffic in this run; not dlt's load-job file paths."""
    table = raw_table(result.asset_key)
    traffic = client.stats.get(ENDPOINTS[table].path, EndpointStats()).as_dict()
    dlt = dict(result.metadata or {})
    rows = dlt.pop("rows_loaded", None)  # dlt's, when it loaded any
    # dlt's load jobs: file paths in the run worker's temporary folder, gone after the run.
    dlt.pop("jobs", None)
    dlt.pop(TABLE_NAME, None)  # `<destination type>.<dataset>.<table>`: replaced by the real one
    metadata = {  # in the order the UI lists them: whose data, how much, from where, then dlt's
        "tenant_name": tenant_name or "",
        "tenant_id": tenant_id,
        "rows_loaded": dg.MetadataValue.int(int(getattr(rows, "value", rows) or 0) + later_chunks_rows),
        "dagster/row_count": dg.MetadataValue.int(row_counts[table]),
        TABLE_NAME: f"{database}.{RAW_SCHEMA}.{table}",
        **{f"xero/{name}": dg.MetadataValue.int(value)
           for name, value in traffic.items() if value is not None},
        **dlt,
    }
    return dg.MaterializeResult(asset_key=result.asset_key, metadata=metadata)


RAW_ASSET_KEYS = sorted(xero_raw_assets.keys, key=lambda key: key.path)


def permanent_cause(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s cause chain (dlt wraps what a resource raised) that no retry can fix
    today: the user must reconnect, the tenant is gone, the daily limit is spent (or down to the
    web app's reserve), Xero refused the request itself (401 after a fresh token, 403, 404), or
    another sync of the tenant held its lock for longer than this run may wait."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PERMANENT_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
