"""The Dagster code location: it loads, and its graph has the seams the design promises."""

from __future__ import annotations

import dagster as dg

from orchestration.definitions import defs
from orchestration.jobs import SYNC_JOB_NAME
from orchestration.partitions import TENANT_PARTITIONS_NAME, checked_tenant_id, tenant_partitions

RAW_INVOICES = dg.AssetKey(["raw_xero", "invoices"])


def asset_graph():
    return defs.resolve_asset_graph()


def test_every_asset_is_partitioned_by_tenant():
    graph = asset_graph()
    keys = list(graph.get_all_asset_keys())
    assert RAW_INVOICES in keys
    assert dg.AssetKey(["invoices"]) in keys
    for key in keys:
        pdef = graph.get(key).partitions_def
        assert isinstance(pdef, dg.DynamicPartitionsDefinition), key
        assert pdef.name == TENANT_PARTITIONS_NAME


def test_every_asset_says_how_fresh_the_daily_sync_keeps_it():
    from orchestration.freshness import DAILY_SYNC_FRESHNESS

    graph = asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).freshness_policy == DAILY_SYNC_FRESHNESS, key


def test_every_xero_endpoint_is_a_raw_asset_feeding_its_staging_model():
    from xero_source import ENDPOINTS

    graph = asset_graph()
    raw_keys = {key for key in graph.get_all_asset_keys() if key.path[0] == "raw_xero"}
    assert raw_keys == {dg.AssetKey(["raw_xero", name]) for name in ENDPOINTS}
    for name in ENDPOINTS:
        staging = dg.AssetKey([f"stg_xero__{name}"])
        # The dbt source is the dlt asset itself (meta.dagster.asset_key), not a separate node.
        assert graph.get(staging).parent_keys == {dg.AssetKey(["raw_xero", name])}
    assert graph.get(dg.AssetKey(["invoices"])).parent_keys == {dg.AssetKey(["stg_xero__invoices"])}


def test_sync_job_covers_raw_and_analytics_and_retries():
    job = defs.resolve_job_def(SYNC_JOB_NAME)
    assert job.partitions_def == tenant_partitions
    assert job.op_retry_policy is not None and job.op_retry_policy.max_retries >= 1
    ops = {node.name for node in job.graph.nodes}
    assert {"xero_raw", "analytics_models"} <= ops


def test_schedules_and_sensors_run_by_default():
    schedule = defs.resolve_schedule_def("daily_tenant_sync")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    for name in ("new_tenant_sensor", "xero_webhook_sensor", "audit_successful_runs", "audit_failed_runs"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_dbt_assets_share_one_pool():
    graph = asset_graph()
    node = graph.get(dg.AssetKey(["invoices"]))
    assert node.pools == {"dbt"}


def test_partition_keys_must_be_tenant_uuids():
    assert checked_tenant_id("3F0A2B4C-5D6E-4F70-8A9B-0C1D2E3F4A5B") == "3f0a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
    for bad in ("", "abc", "x'; drop table app.audit_log; --"):
        try:
            checked_tenant_id(bad)
        except ValueError as exc:
            assert "not a Xero tenant id" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_the_manifest_names_the_database_this_process_builds(tmp_path, monkeypatch):
    """The UI shows each dbt asset's storage from the manifest: parsed for the database in use."""
    import json
    import shutil

    from dagster_dbt import DbtProject

    from orchestration.dbt_project import ensure_manifest
    from orchestration.settings import DBT_PROJECT_DIR

    copy = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs"))
    project = DbtProject(project_dir=copy, profiles_dir=copy)

    def storage_of_invoices() -> str:
        manifest = json.loads(ensure_manifest(project).read_text())
        return manifest["nodes"]["model.xero_elt.invoices"]["relation_name"]

    monkeypatch.setenv("DATABASE_URL", "postgresql://etl@db.internal:5432/coaching_prod")
    assert storage_of_invoices() == '"coaching_prod"."analytics"."invoices"'
    monkeypatch.setenv("DATABASE_URL", "postgresql://etl@db.internal:5432/coaching_staging")
    assert storage_of_invoices() == '"coaching_staging"."analytics"."invoices"'


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
