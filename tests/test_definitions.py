"""The Dagster code location: it loads, and its graph has the seams the design promises."""

from __future__ import annotations

import json

import dagster as dg
import yaml

from orchestration.definitions import defs
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME, raw_asset_key
from orchestration.partitions import TENANT_PARTITIONS_NAME, checked_tenant_id, tenant_partitions
from orchestration.settings import DAGSTER_YAML_TEMPLATE, DBT_PROJECT_DIR

RAW_INVOICES = dg.AssetKey(["raw_xero", "xero_invoices"])
INVOICES = dg.AssetKey(["analytics", "invoices"])
QUARANTINE = dg.AssetKey(["analytics", "invoices_quarantine"])
KPI_MONTHLY = dg.AssetKey(["analytics", "kpi_monthly"])
STAGING_MODELS = ("stg_xero__invoices", "stg_xero__contacts", "stg_xero__payments", "stg_xero__credit_notes",
                  "stg_xero__accounts", "stg_xero__organisation")
DBT_ASSETS = {dg.AssetKey(["staging", m]) for m in STAGING_MODELS} | {INVOICES, QUARANTINE, KPI_MONTHLY}
# The OAuth service's table, a dbt source: shown in the graph, owned (and kept fresh) elsewhere.
APP_CONNECTIONS = dg.AssetKey(["app", "xero_connections"])


def asset_graph():
    return defs.resolve_asset_graph()


def raw_keys() -> set[dg.AssetKey]:
    from xero_source import ENDPOINTS

    return {raw_asset_key(name) for name in ENDPOINTS}


def test_raw_assets_are_partitioned_by_tenant_and_dbt_assets_are_not():
    graph = asset_graph()
    materializable = {k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    assert materializable == raw_keys() | DBT_ASSETS
    assert {k for k in graph.get_all_asset_keys() if not graph.get(k).is_materializable} == {APP_CONNECTIONS}
    for key in raw_keys():
        node = graph.get(key)
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition), key
        assert node.partitions_def.name == TENANT_PARTITIONS_NAME
        assert node.group_name == "raw_xero", key
    # One set-based build serves every tenant: the dbt assets follow every tenant partition.
    for key in DBT_ASSETS:
        node = graph.get(key)
        assert node.partitions_def is None, key
        # Grouped by layer, each group named after its schema, the key's prefix.
        assert node.group_name == key.path[0] and key.path[0] in ("staging", "analytics"), key


def test_every_asset_is_described_owned_and_tagged_by_its_layer():
    graph = asset_graph()
    layers = {"raw_xero": "raw", "staging": "staging", "analytics": "marts"}
    for key in raw_keys() | DBT_ASSETS:
        node = graph.get(key)
        assert node.description and len(node.description) > 20, key
        assert node.tags.get("layer") == layers[key.path[0]], (key, node.tags)
        assert node.owners and all(o.startswith("team:") for o in node.owners), key
    assert {o for k in DBT_ASSETS if k.path[0] == "analytics" for o in graph.get(k).owners} \
        == {"team:analytics-engineering"}


def test_every_asset_says_how_fresh_the_daily_sync_keeps_it():
    from orchestration.freshness import DAILY_SYNC_FRESHNESS

    graph = asset_graph()
    for key in raw_keys() | DBT_ASSETS:
        assert graph.get(key).freshness_policy == DAILY_SYNC_FRESHNESS, key


def test_every_xero_endpoint_is_a_raw_asset_feeding_its_staging_model():
    from xero_source import ENDPOINTS

    assert "organisation" in ENDPOINTS
    graph = asset_graph()
    assert {k for k in graph.get_all_asset_keys() if k.path[0] == "raw_xero"} == raw_keys()
    for name in ENDPOINTS:
        staging = dg.AssetKey(["staging", f"stg_xero__{name}"])
        # The dbt source is the dlt asset itself (meta.dagster.asset_key), not a separate node.
        assert graph.get(staging).parent_keys == {raw_asset_key(name)}, name
    # The canonical invoices need the organisation (base currency) and the connection (its id).
    assert graph.get(INVOICES).parent_keys == {dg.AssetKey(["staging", "stg_xero__invoices"]),
                                               dg.AssetKey(["staging", "stg_xero__organisation"]),
                                               APP_CONNECTIONS}
    assert graph.get(QUARANTINE).parent_keys == {dg.AssetKey(["staging", "stg_xero__invoices"])}
    # The KPIs are built from the canonical invoices and the staged money movements.
    assert INVOICES in graph.get(KPI_MONTHLY).parent_keys


def test_staging_and_marts_live_in_schemas_of_their_own():
    from orchestration.dbt_project import ensure_manifest

    nodes = json.loads(ensure_manifest().read_text())["nodes"]
    schemas = {n["name"]: n["schema"] for n in nodes.values() if n["resource_type"] == "model"}
    assert schemas == {**{m: "staging" for m in STAGING_MODELS}, "invoices": "analytics",
                       "invoices_quarantine": "analytics", "kpi_monthly": "analytics"}


def test_dbt_is_set_based_and_incremental_on_pending_loads():
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    assert "tenant_id" not in (project.get("vars") or {}), "no per-tenant build any more"
    assert any("claim_pending_loads" in hook for hook in project["on-run-start"])
    assert any("finish_load_batch" in hook for hook in project["on-run-end"])


def _selected_assets(job: dg.JobDefinition) -> set[dg.AssetKey]:
    return set(job.asset_layer.selected_asset_keys)


def test_the_extract_job_is_per_tenant_and_extracts_only():
    job = defs.resolve_job_def(SYNC_JOB_NAME)
    assert job.partitions_def == tenant_partitions
    assert job.executor_def.name == "in_process"
    assert job.op_retry_policy is not None and job.op_retry_policy.max_retries >= 1
    assert _selected_assets(job) == raw_keys()
    # No dbt in an extract run (not even dbt's source tests): the analytics build is a job of its own.
    assert {node.name for node in job.graph.nodes} == {"extract_xero_tenant"}


def test_the_analytics_job_builds_every_dbt_asset_at_once():
    job = defs.resolve_job_def(ANALYTICS_JOB_NAME)
    assert job.partitions_def is None
    assert job.executor_def.name == "in_process"
    assert job.op_retry_policy is not None and job.op_retry_policy.max_retries >= 1
    assert _selected_assets(job) == DBT_ASSETS
    assert {node.name for node in job.graph.nodes} == {"analytics_models"}
    # The instance runs one analytics build at a time by this tag (deploy/dagster.yaml).
    limits = yaml.safe_load(DAGSTER_YAML_TEMPLATE.read_text())["concurrency"]["runs"]
    [limit] = [lim for lim in limits["tag_concurrency_limits"] if lim["key"] == "xero-elt/job"]
    assert job.tags["xero-elt/job"] == limit["value"] and limit["limit"] == 1


def test_every_step_holds_its_runs_liveness_lock():
    for name in (SYNC_JOB_NAME, ANALYTICS_JOB_NAME):
        for node in defs.resolve_job_def(name).graph.nodes:
            assert "run_liveness" in node.definition.required_resource_keys, (name, node.name)


def test_no_asset_or_op_uses_a_pool():
    """A pool slot outlived a killed run; advisory locks (orchestration/locks.py) die with it."""
    graph = asset_graph()
    for key in graph.get_all_asset_keys():
        assert not graph.get(key).pools, key
    for name in (SYNC_JOB_NAME, ANALYTICS_JOB_NAME):
        for node in defs.resolve_job_def(name).graph.nodes:
            assert node.definition.pool is None, (name, node.name)
    instance_config = yaml.safe_load(DAGSTER_YAML_TEMPLATE.read_text())
    assert "pools" not in instance_config.get("concurrency", {})
    assert "pools" not in instance_config


def test_schedules_and_sensors_run_by_default():
    schedule = defs.resolve_schedule_def("daily_tenant_sync")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == SYNC_JOB_NAME
    sensors = ("tenant_connections_sensor", "xero_webhook_sensor", "analytics_after_extracts",
               "recover_crashed_runs",
               "audit_successful_runs", "audit_failed_runs", "audit_canceled_runs")
    assert {s.name for s in defs.sensors} == set(sensors)
    for name in sensors:
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING, name
    assert defs.resolve_sensor_def("analytics_after_extracts").job_name == ANALYTICS_JOB_NAME
    assert defs.resolve_sensor_def("tenant_connections_sensor").job_name == SYNC_JOB_NAME


def test_partition_keys_must_be_tenant_uuids():
    assert checked_tenant_id("3F0A2B4C-5D6E-4F70-8A9B-0C1D2E3F4A5B") == "3f0a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    for bad in ("", "abc", "x'; drop table app.audit_log; --"):
        try:
            checked_tenant_id(bad)
        except ValueError as exc:
            assert "not a Xero tenant id" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_the_definitions_are_the_same_whatever_database_a_process_builds(tmp_path):
    """The webserver, the daemon and each run load the definitions in their own process; a job
    snapshot that changed with the database (dbt's relation names) made "Re-execute" warn of a
    different version, and a manifest parsed per database was parsed again and again."""
    import os
    import subprocess
    import sys

    from orchestration.dbt_project import ensure_manifest

    manifest = ensure_manifest()
    parsed_at = manifest.stat().st_mtime
    code = ("import json; from orchestration.definitions import defs; import dagster as dg\n"
            "g = defs.resolve_asset_graph()\n"
            "print(json.dumps({'snapshots': [defs.resolve_job_def(n).get_job_snapshot_id() "
            "for n in ('xero_tenant_sync', 'xero_analytics')], 'tables': {k.to_user_string(): "
            "g.get(k).metadata.get('dagster/table_name') for k in g.get_all_asset_keys()}}))")
    seen = []
    for database in ("coaching_prod", "coaching_staging"):
        env = {**os.environ, "DATABASE_URL": f"postgresql://etl@db.internal:5432/{database}"}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert seen[0] == seen[1]
    tables = seen[0]["tables"]
    assert tables["analytics/invoices"] == "analytics.invoices"
    assert tables["staging/stg_xero__invoices"] == "staging.stg_xero__invoices"
    assert tables["raw_xero/xero_invoices"] == "raw_xero.invoices"
    assert manifest.stat().st_mtime == parsed_at  # not parsed again for another database


def test_loading_the_definitions_writes_nothing_to_the_shared_dlt_folder(tmp_path):
    """Processes load the definitions at the same moment (webserver and daemon, two `xero-elt
    sync`): a shared folder created at import raced (FileExistsError from dlt)."""
    import os
    import subprocess
    import sys

    shared = tmp_path / "dlt"
    done = subprocess.run([sys.executable, "-c", "import orchestration.definitions"],
                          env={**os.environ, "DLT_DATA_DIR": str(shared)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (shared / "pipelines" / "xero_template").exists()


def test_every_check_schedule_sensor_and_job_says_what_it_does():
    graph = asset_graph()
    for check in graph.asset_check_keys:
        assert (graph.get_check_spec(check).description or "").strip(), check
    for item in (*defs.schedules, *defs.sensors, *(defs.resolve_job_def(n) for n in (SYNC_JOB_NAME,
                                                                                     ANALYTICS_JOB_NAME))):
        assert len((item.description or "").strip()) > 20, item.name


def test_no_definition_shows_as_unserializable_in_the_ui():
    """What the webserver receives from the code location (its snapshot): every metadata value
    serialises as itself. dagster-dbt's manifest, translator and project objects, which it keeps in
    its assets' metadata by default, are left out (the dbt step hands them to dbt itself)."""
    import re

    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    unserializable = re.findall(r'"([^"]*)\(unserializable\)"\}, "label": "([^"]+)"', snapshot)
    assert "(unserializable)" not in snapshot, unserializable
    # The snapshot does carry the assets' metadata (the test is not looking at an empty one).
    labels = re.findall(r'"label": "([^"]+)"', snapshot)
    assert labels.count("dagster/table_name") >= len(DBT_ASSETS) + 6
    assert "dagster_dbt/unique_id" in labels


def test_no_two_assets_share_a_name_in_the_graph():
    """The asset graph labels a node by its key's last part: the raw and the canonical invoices
    must not both read `invoices`."""
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    labels = [key.path[-1] for key in keys]
    assert len(labels) == len(set(labels)), sorted(label for label in labels if labels.count(label) > 1)
    assert {"xero_invoices", "stg_xero__invoices", "invoices"} <= set(labels)
