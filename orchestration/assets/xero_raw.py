"""Raw Xero records per tenant, loaded by dlt into `raw_xero` (one asset per Xero endpoint)."""


import os
import tempfile
from collections.abc import Iterator

import dagster as dg
import dlt as dlt_lib
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, build_dlt_asset_specs
from dagster_dlt.translator import DltResourceTranslatorData

from oauth_service.vault import ReauthRequired, TenantNotConnected
from orchestration.extract_ledger import record_extract
from orchestration.freshness import DAILY_SYNC_FRESHNESS
from orchestration.locks import LockWaitTimeout, tenant_lock
from orchestration.partitions import checked_tenant_id, tenant_partitions
from orchestration.resources import TokenVaultResource, XeroPipelineResource
from orchestration.run_health import RunLivenessResource
from orchestration.settings import RAW_SCHEMA, DatabaseUrl
from xero_source import ENDPOINTS, DailyLimitExceeded, EndpointStats, XeroClient, xero_source

RAW_GROUP = "xero_raw"
PERMANENT_ERRORS = (ReauthRequired, TenantNotConnected, DailyLimitExceeded, LockWaitTimeout)
TEMPLATE_TENANT = "00000000-0000-0000-0000-000000000000"
TABLE_NAME = "dagster/table_name"  # Dagster's key for an asset's table (the UI shows it)


class XeroDltTranslator(DagsterDltTranslator):
    def get_asset_spec(self, data: DltResourceTranslatorData) -> dg.AssetSpec:
        spec = super().get_asset_spec(data)
        return spec.replace_attributes(
            key=dg.AssetKey([RAW_SCHEMA, data.resource.name]),
            deps=[],  # Xero itself is not an asset here
            group_name=RAW_GROUP,
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


# What @dlt_assets builds, minus the unserializable metadata.
@dg.multi_asset(
    name="xero_raw",
    specs=[_without_dlt_objects(spec) for spec in build_dlt_asset_specs(
        dlt_source=xero_source(TEMPLATE_TENANT, token_provider=lambda: ""),
        dlt_pipeline=_template_pipeline,
        dagster_dlt_translator=XeroDltTranslator(),
    )],
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
    tenant_id = checked_tenant_id(context.partition_key)
    vault = token_vault.get()
    database_url = os.environ["DATABASE_URL"]
    client = xero_pipeline.client(tenant_id, vault)
    try:
        # Held while dlt runs, not across yields (see analytics_models).
        with tenant_lock(tenant_id, holder=f"xero-elt run {context.run.run_id} extract",
                         database_url=database_url, announce=context.log.warning):
            results = list(dlt.run(
                context=context,
                dlt_source=xero_pipeline.source(client, full_refresh=config.full_refresh),
                dlt_pipeline=xero_pipeline.pipeline(tenant_id),
                dagster_dlt_translator=XeroDltTranslator(),
            ))
            record_extract(database_url, tenant_id, context.run.run_id)
    except Exception as exc:
        permanent = permanent_cause(exc)
        if permanent is None:
            raise  # transient: the job's retry policy tries again
        raise dg.Failure(
            description=f"tenant {tenant_id}: {permanent}",
            metadata={"tenant_id": tenant_id, "reason": type(permanent).__name__},
            allow_retries=False,
        ) from exc
    tenant = vault.tenant(tenant_id)
    database = DatabaseUrl.parse(database_url).database
    context.log.info(f"tenant {tenant_id} ({tenant.tenant_name if tenant else '?'}): Xero traffic "
                     + "; ".join(f"{path} {st.calls} call(s), {st.bytes:,} bytes, {st.rate_limited} 429(s), "
                                 f"{st.retries} retries, minute/day limit left {st.minute_limit_left}/"
                                 f"{st.day_limit_left}" for path, st in client.stats.items()))
    for result in results:
        yield extract_result(result, client, tenant_id, tenant.tenant_name if tenant else None, database)


def extract_result(result: dg.MaterializeResult, client: XeroClient, tenant_id: str,
                   tenant_name: str | None, database: str) -> dg.MaterializeResult:
    """dagster-dlt's materialisation, made true and useful: the table as `<database>.raw_xero.<t>`
    on every tenant's (dlt names its destination type, and only when rows were loaded), the rows
    loaded (0 too), the tenant's name, and the endpoint's Xero traffic in this run."""
    table = result.asset_key.path[-1]
    traffic = client.stats.get(ENDPOINTS[table].path, EndpointStats()).as_dict()
    rows = (result.metadata or {}).get("rows_loaded")  # dlt's, when it loaded any
    metadata = {
        **(result.metadata or {}),
        "rows_loaded": dg.MetadataValue.int(int(getattr(rows, "value", rows) or 0)),
        "tenant_id": tenant_id,
        "tenant_name": tenant_name or "",
        **{f"xero/{name}": dg.MetadataValue.int(value)
           for name, value in traffic.items() if value is not None},
        TABLE_NAME: f"{database}.{RAW_SCHEMA}.{table}",
    }
    return dg.MaterializeResult(asset_key=result.asset_key, metadata=metadata)


RAW_ASSET_KEYS = sorted(xero_raw_assets.keys, key=lambda key: key.path)


def permanent_cause(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s cause chain (dlt wraps what a resource raised) that no retry can fix
    today: the user must reconnect, the tenant is gone, the daily limit is spent, or another sync
    of the tenant held its lock for longer than this run may wait."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PERMANENT_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
