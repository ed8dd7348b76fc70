"""The thin slice end to end, for two tenants: sandbox → OAuth → dlt (one extract run per tenant)
→ one set-based dbt build (the analytics run) → staging and analytics.invoices, through Dagster,
audited; idempotent and incremental on a second run."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration.extract_ledger import pending_loads, record_extract
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME, raw_table
from orchestration.resources import TokenVaultResource
from orchestration.settings import DatabaseUrl
from orchestration.sync import sync_tenants
from tests import secret_watch
from tests.pipeline.truth import assert_invoices_equal_truth, base_currency

# Xero's clock moves on between changes, but less than an access token's life (30 minutes): a
# bigger jump expires, in Xero's eyes, a token the vault has just refreshed (and a step is retried).
TICK = 5


# staging model, sandbox resource, its id field, the staging id column, amount column (or None),
# the column flagging records Xero no longer counts (or None)
STAGED = [
    ("stg_xero__contacts", "Contacts", "ContactID", "contact_id", None, None),
    ("stg_xero__payments", "Payments", "PaymentID", "payment_id", "amount", "is_deleted"),
    ("stg_xero__credit_notes", "CreditNotes", "CreditNoteID", "credit_note_id", "total", "is_deleted"),
    ("stg_xero__accounts", "Accounts", "AccountID", "account_id", None, None),
]


def staged_matches_truth(platform) -> None:
    """Every staged resource holds exactly the sandbox's current records, per tenant, and each
    tenant's organisation its base currency."""
    with psycopg.connect(platform.database_url) as conn:
        for model, resource, id_field, id_column, amount, deleted in STAGED:
            for tenant_id in platform.tenant_ids:
                rows = conn.execute(
                    f"SELECT {id_column}::text, {amount or 0} FROM staging.{model} "  # noqa: S608
                    f"WHERE tenant_id = %s AND NOT {deleted or 'false'}", (tenant_id,)).fetchall()
                truth = platform.sandbox.truth(tenant_id, resource)
                ids = {r[id_field] for r in platform.sandbox.truth_records(tenant_id, resource)}
                assert {r[0] for r in rows} == ids, (model, tenant_id)
                assert len(rows) == int(truth["count"]), (model, tenant_id)
                if amount:
                    assert sum(r[1] for r in rows) == Decimal(str(truth["total"])), (model, tenant_id)
        organisations = dict(conn.execute(
            "SELECT tenant_id, base_currency FROM staging.stg_xero__organisation").fetchall())
    assert organisations == {t: base_currency(platform.sandbox, t) for t in platform.tenant_ids}


def raw_versions(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM raw_xero.invoices").fetchone()[0]


def audit_rows(database_url: str) -> set[tuple]:
    """(action, run id, run status, tenant, job) of every sync run audited."""
    with psycopg.connect(database_url) as conn:
        return set(conn.execute(
            "SELECT action, record_id, metadata->>'status', tenant_id, metadata->>'job' FROM app.audit_log "
            "WHERE action LIKE 'sync_run_%'").fetchall())


def sensor_tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None
                ) -> dg.SensorResult:
    """One evaluation of a sensor that returns a SensorResult or a SkipReason, as a SensorResult."""
    from orchestration.resources import TokenVaultResource

    resources = {"token_vault": TokenVaultResource()}
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result, cursor=cursor)
    return result


def audit_metadata(database_url: str, action: str, run_id: str) -> dict:
    with psycopg.connect(database_url) as conn:
        [(metadata,)] = conn.execute(
            "SELECT metadata FROM app.audit_log WHERE action = %s AND record_id = %s", (action, run_id)
        ).fetchall()
    return metadata


def last_syncs(database_url: str) -> dict[str, datetime | None]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT tenant_id, last_sync FROM app.xero_connections").fetchall())


def utc_now(database_url: str) -> datetime:
    """The database's now, as the naive UTC timestamps of analytics.invoices."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::timestamp").fetchone()[0]


def invoices_changed_since(database_url: str, since: datetime, tenant_id: str | None = None) -> set[str]:
    """Xero ids of the invoices whose row was created or changed (updated_at) after `since`."""
    with psycopg.connect(database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT xero_invoice_id FROM analytics.invoices WHERE (updated_at > %s OR created_at > %s) "
            "AND (%s::text IS NULL OR tenant_id = %s)", (since, since, tenant_id, tenant_id)).fetchall()}


def invoice_row(database_url: str, tenant_id: str, invoice_id: str) -> dict | None:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute("SELECT * FROM analytics.invoices WHERE tenant_id = %s AND xero_invoice_id = %s",
                           (tenant_id, invoice_id))
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row, strict=True)) if row else None


def quarantined(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute(
            "SELECT xero_invoice_id, reason FROM analytics.invoices_quarantine").fetchall())


def retried(instance: dg.DagsterInstance, run_id: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event
            and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def run_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(e.user_message or "" for e in instance.all_logs(run_id))


def analytics_runs(instance: dg.DagsterInstance) -> set[str]:
    return {r.run_id for r in instance.get_runs(dg.RunsFilter(job_name=ANALYTICS_JOB_NAME))}


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory()


def test_two_tenants_land_exactly_once(platform):
    db, instance = platform.database_url, platform.instance
    audited_before = audit_rows(db)
    first = sync_tenants(platform.tenant_ids, instance=instance)
    assert [r.success for r in first] == [True, True], [r.error for r in first]
    assert_invoices_equal_truth(platform)  # field by field, DELETED included
    assert quarantined(db) == {}
    staged_matches_truth(platform)
    for r in first:
        records = list(platform.sandbox.records(r.tenant_id, "Invoices", include_deleted=True))
        assert r.invoices == len(records)  # every status
        # Their amount as the sandbox totals it: DELETED ones left out.
        assert r.invoices_total == Decimal(platform.sandbox.truth(r.tenant_id, "Invoices")["total"])
        assert r.invoices_total == sum(Decimal(str(rec["Total"])) for rec in records
                                       if rec["Status"] != "DELETED")
        assert r.fetched["invoices"] == len(records) and r.fetched["organisation"] == 1
    # Raw keeps every record version, DELETED ones included: at least one row per invoice.
    versions = raw_versions(db)
    assert versions >= sum(r.invoices for r in first)
    # One build for both tenants, after both extracts; it processed every load.
    [build] = {r.analytics_run_id for r in first}
    assert build is not None and build not in {r.run_id for r in first}
    assert pending_loads(db)[0] == 0
    # `last_sync` (what the web app shows) is set once the tenant's analytics are built.
    synced = last_syncs(db)
    assert all(synced[t] is not None for t in platform.tenant_ids), synced

    built = utc_now(db)
    second = sync_tenants(platform.tenant_ids, instance=instance)
    assert all(r.success for r in second), [r.error for r in second]
    assert_invoices_equal_truth(platform)
    assert raw_versions(db) == versions, "a second run must load nothing twice"
    # Nothing changed in Xero: the incremental build changed no invoice.
    assert invoices_changed_since(db, built) == set()
    assert pending_loads(db)[0] == 0
    assert all(last_syncs(db)[t] > synced[t] for t in platform.tenant_ids)

    # Every run is visible on the Dagster instance and audited once: each tenant's extract as a
    # partition run of the extract job, each build as a run of the analytics job, of no tenant.
    builds = {r.analytics_run_id for r in first + second}
    assert len(builds) == 2
    # Each run's start is audited too, by the run itself.
    expected = {(action, r.run_id, status, r.tenant_id, SYNC_JOB_NAME) for r in first + second
                for action, status in (("sync_run_started", "STARTED"), ("sync_run_succeeded", "SUCCESS"))}
    expected |= {(action, run_id, status, None, ANALYTICS_JOB_NAME) for run_id in builds
                 for action, status in (("sync_run_started", "STARTED"), ("sync_run_succeeded", "SUCCESS"))}
    assert audit_rows(db) - audited_before == expected
    names = {t.tenant_id: t.tenant_name for t in TokenVaultResource().get().active_tenants()}
    database = DatabaseUrl.parse(db).database
    for r in first + second:
        run = instance.get_run_by_id(r.run_id)
        assert run.job_name == SYNC_JOB_NAME and run.tags["dagster/partition"] == r.tenant_id
        assert run.tags["xero-elt/tenant_name"] == names[r.tenant_id]  # named for people
        # Each raw asset's materialisation: its real table, rows, the tenant, its Xero traffic.
        calls = 0
        for event in instance.get_records_for_run(
                r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            mat = event.event_log_entry.asset_materialization
            table = raw_table(mat.asset_key)
            assert mat.metadata["dagster/table_name"].value == f"{database}.raw_xero.{table}"
            assert mat.metadata["rows_loaded"].value == r.fetched[table]
            assert mat.metadata["tenant_name"].text == names[r.tenant_id]
            assert list(mat.metadata)[:2] == ["tenant_name", "tenant_id"]  # listed first in the UI
            assert "jobs" not in mat.metadata  # dlt's load files, in a folder gone after the run
            # The tenant's rows in the table then (the second sync's: now).
            with psycopg.connect(platform.database_url) as conn:
                now = conn.execute(f"SELECT count(*) FROM raw_xero.{table} WHERE tenant_id = %s",  # noqa: S608
                                   (r.tenant_id,)).fetchone()[0]
            rows = mat.metadata["dagster/row_count"].value
            assert r.fetched[table] <= rows == now if r in second else r.fetched[table] <= rows <= now
            assert mat.metadata["xero/calls"].value >= 1
            assert mat.metadata["xero/rate_limited"].value == 0
            assert mat.metadata["xero/bytes"].value > 0
            # Xero's limits left after the endpoint's last answer (its headers): minute, day, app.
            assert 0 <= mat.metadata["xero/minute_limit_left"].value < 60
            assert 0 <= mat.metadata["xero/day_limit_left"].value < 5_000
            assert 0 <= mat.metadata["xero/app_minute_limit_left"].value < 10_000
            calls += mat.metadata["xero/calls"].value
        # Its audit row carries what it did.
        figures = audit_metadata(db, "sync_run_succeeded", r.run_id)
        assert figures["records_loaded"] == sum(r.fetched.values()) and figures["api_calls"] == calls
        assert 0 < figures["duration_seconds"] < 600
    # Nothing changed the second time: one call per endpoint, Xero's floor.
    assert all(audit_metadata(db, "sync_run_succeeded", r.run_id)["api_calls"] == 6 for r in second)
    for run_id in builds:
        run = instance.get_run_by_id(run_id)
        assert run.job_name == ANALYTICS_JOB_NAME and "dagster/partition" not in run.tags
        assert run.status == dg.DagsterRunStatus.SUCCESS


def test_the_cli_extracts_tenants_in_parallel_then_builds_once(platform):
    """`xero-elt sync --concurrency 2`: both tenants' extract runs at the same time (each in a
    worker process, as the daemon's run workers), a line per tenant as it finishes, one analytics
    build for both, and a summary table."""
    instance = platform.instance
    before = {r.run_id for r in instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME))}
    cli = str(Path(sys.executable).with_name("xero-elt"))
    # Xero's answers wait until both extracts are under way: if they ran in turn, this never ends.
    with platform.sandbox.hold_calls(timeout=120):
        proc = subprocess.Popen([cli, "sync", "--concurrency", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while len([r for r in instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME,
                                                              statuses=[dg.DagsterRunStatus.STARTED]))
                   if r.run_id not in before]) < 2:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the two extracts never ran at the same time"
            time.sleep(0.2)
    output = proc.communicate(timeout=300)[0]
    secret_watch.record(output)
    assert proc.returncode == 0, output[-3000:]
    assert "extracting 2 tenant(s), 2 at a time" in output
    for tenant_id in platform.tenant_ids:
        assert re.search(rf"\[[12]/2\] {tenant_id} \(.+\): extract ok, [\d,]+ records in [\d.]+ s "
                         r"\(run [0-9a-f-]{36}\)", output), output
    assert len(re.findall(r"analytics build ok \(run ", output)) == 1, output
    table = output[output.index("tenant  "):].splitlines()
    assert table[0].split() == ["tenant", "name", "status", "fetched", "invoices", "amount", "extract", "s",
                                "run"]
    assert sorted(line.split()[0] for line in table[1:3]) == sorted(platform.tenant_ids)
    assert all(" ok " in line for line in table[1:3])
    assert "2 of 2 tenant(s) synced" in output
    assert_invoices_equal_truth(platform)


def test_a_tenant_that_is_not_connected_fails_once_clearly_and_is_audited(platform):
    from orchestration.run_audit import audit_run
    from orchestration.sensors import audit_failed_runs

    stranger = str(uuid.uuid4())
    builds_before = analytics_runs(platform.instance)
    [result] = sync_tenants([stranger], instance=platform.instance)
    assert not result.success
    assert stranger in result.error and "not connected" in result.error
    # No extract succeeded: no analytics build was started for nothing.
    assert result.analytics_run_id is None
    assert analytics_runs(platform.instance) == builds_before
    # A permanent failure is not retried (the job retries transient failures only).
    assert retried(platform.instance, result.run_id) == []
    failed = {a for a in audit_rows(platform.database_url) if a[1] == result.run_id}
    assert failed == {("sync_run_started", result.run_id, "STARTED", stranger, SYNC_JOB_NAME),
                      ("sync_run_failed", result.run_id, "FAILURE", stranger, SYNC_JOB_NAME)}

    # The daemon's failure sensor sees the same run later: it is not recorded twice.
    run = platform.instance.get_run_by_id(result.run_id)
    assert audit_run(platform.instance, run) is False
    context = dg.build_run_status_sensor_context(
        sensor_name="audit_failed_runs", dagster_instance=platform.instance,
        dagster_run=run, dagster_event=next(
            e.dagster_event for e in platform.instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.PIPELINE_FAILURE),
    ).for_run_failure()
    audit_failed_runs(context)
    assert {a for a in audit_rows(platform.database_url) if a[1] == result.run_id} == failed


def xero_calls(sandbox) -> int:
    return sandbox.stats()["totalCalls"]


@pytest.mark.parametrize("made_up", ["not-a-tenant", "7d1e0c52-5a1f-4b0e-9d57-3c1f2a9b8e10"])
def test_a_partition_added_by_hand_is_refused_before_any_extract(platform, made_up):
    """What the UI's "Add partition" allows: a key with no connection behind it."""
    from orchestration.definitions import defs
    from orchestration.partitions import TENANT_PARTITIONS_NAME
    from orchestration.run_audit import audit_run

    platform.instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, [made_up])
    calls = xero_calls(platform.sandbox)
    result = defs.resolve_job_def(SYNC_JOB_NAME).execute_in_process(
        instance=platform.instance, partition_key=made_up, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert f"partition '{made_up}' refused before any extract" in failure.message, failure.message
    assert ("is not a Xero tenant id" if made_up == "not-a-tenant" else "is not connected") in failure.message
    assert xero_calls(platform.sandbox) == calls  # nothing was asked of Xero
    assert retried(platform.instance, result.run_id) == []  # and it is not retried
    audit_run(platform.instance, platform.instance.get_run_by_id(result.run_id))  # as the daemon's sensor
    assert "refused before any extract" in audit_metadata(platform.database_url, "sync_run_failed",
                                                          result.run_id)["error"]
    platform.instance.delete_dynamic_partition(TENANT_PARTITIONS_NAME, made_up)


def test_schedule_and_sensors_request_the_runs_the_daemon_needs(platform):
    from orchestration.definitions import defs

    with dg.instance_for_test() as instance:
        _check_tenant_sensor_and_schedule(platform, instance, defs)
    with dg.instance_for_test() as instance:
        _check_analytics_after_extracts(platform, instance, defs)
    with dg.instance_for_test() as instance:
        _check_recover_crashed_runs(platform, instance, defs)


def _check_tenant_sensor_and_schedule(platform, instance, defs):
    from orchestration.schedules import full_refresh_weekday

    resources = {"token_vault": TokenVaultResource()}
    names = {t.tenant_id: t.tenant_name for t in TokenVaultResource().get().active_tenants()}
    sensor = defs.resolve_sensor_def("tenant_connections_sensor")
    tick = sensor_tick(sensor, instance)
    assert sorted(r.partition_key for r in tick.run_requests) == sorted(platform.tenant_ids)
    assert all(r.tags["xero-elt/tenant_name"] == names[r.partition_key] for r in tick.run_requests)
    assert sorted(instance.get_dynamic_partitions("xero_tenants")) == sorted(platform.tenant_ids)
    again = sensor_tick(sensor, instance, tick.cursor)
    assert not again.run_requests and not again.asset_events  # nothing new the second time
    assert again.skip_reason.skip_message == f"no change: {len(platform.tenant_ids)} active"

    schedule = defs.resolve_schedule_def("daily_tenant_sync")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")  # the defaults
    full_days: dict[str, list[int]] = {t: [] for t in platform.tenant_ids}
    for day in range(23, 30):  # a week, Monday 2026-11-23 to Sunday
        when = datetime(2026, 11, day, 2, tzinfo=UTC)
        with dg.build_schedule_context(instance=instance, resources=resources,
                                       repository_def=defs.get_repository_def(),
                                       scheduled_execution_time=when) as ctx:
            runs = list(schedule.evaluate_tick(ctx).run_requests)
        assert sorted(r.partition_key for r in runs) == sorted(platform.tenant_ids)
        assert {r.run_key for r in runs} == {f"{t}:2026-11-{day}T02:00" for t in platform.tenant_ids}
        for r in runs:
            assert r.tags["xero-elt/tenant_name"] == names[r.partition_key]
            full = r.run_config["ops"]["extract_xero_tenant"]["config"]["full_refresh"]
            assert r.tags["xero-elt/full_refresh"] == str(full).lower()
            if full:
                full_days[r.partition_key].append(when.weekday())
    # Each tenant re-reads everything once a week (Xero's silent changes), on a day of its own.
    assert full_days == {t: [full_refresh_weekday(t)] for t in platform.tenant_ids}


def _check_analytics_after_extracts(platform, instance, defs):
    """The daemon's build follows the extracts: one analytics run while loads wait, none without."""
    from dagster._core.test_utils import create_run_for_test

    from orchestration.jobs import sync_ops_config

    db = platform.database_url
    sensor = defs.resolve_sensor_def("analytics_after_extracts")
    assert sensor.job_name == ANALYTICS_JOB_NAME

    def tick():
        with dg.build_sensor_context(instance=instance) as context:
            return sensor.evaluate_tick(context)

    if pending_loads(db)[0]:  # run alone: the module's first sync has not happened
        sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert pending_loads(db)[0] == 0
    idle = tick()
    assert idle.run_requests == [] and "no raw load waiting" in idle.skip_message

    # A tenant's extract alone (as the schedule runs it) leaves its loads for the build.
    extract = defs.resolve_job_def(SYNC_JOB_NAME).execute_in_process(
        partition_key=platform.tenant_ids[0], instance=platform.instance,
        run_config={"ops": sync_ops_config(False)})
    assert extract.success
    count, newest = pending_loads(db)
    assert count >= 1
    [request] = tick().run_requests
    assert request.job_name in (None, ANALYTICS_JOB_NAME)
    assert request.run_key == f"analytics:{newest}" and request.tags["xero-elt/pending_loads"] == str(count)

    # While a build is under way, none is added (it takes every pending load, whatever arrived since).
    running = create_run_for_test(instance, job_name=ANALYTICS_JOB_NAME, status=dg.DagsterRunStatus.STARTED)
    busy = tick()
    assert busy.run_requests == [] and "already queued or running" in busy.skip_message
    instance.report_run_canceled(running)

    build = defs.resolve_job_def(ANALYTICS_JOB_NAME).execute_in_process(instance=platform.instance)
    assert build.success
    assert pending_loads(db)[0] == 0
    done = tick()
    assert done.run_requests == [] and "no raw load waiting" in done.skip_message
    assert_invoices_equal_truth(platform)


def _check_recover_crashed_runs(platform, instance, defs):
    """The daemon's reaper: a run whose worker died is marked failed; a live one is left alone."""
    from dagster._core.test_utils import create_run_for_test

    from orchestration.run_health import LIVENESS_TAG, hold_run_liveness, live_in_process_run

    sensor = defs.resolve_sensor_def("recover_crashed_runs")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.build_sensor_context(instance=instance) as context:
        assert "no crashed run" in sensor.evaluate_tick(context).skip_message

    dead = create_run_for_test(
        instance, job_name=SYNC_JOB_NAME, status=dg.DagsterRunStatus.STARTED,
        tags={LIVENESS_TAG: "gone-host:1", "dagster/partition": platform.tenant_ids[0]})
    live = create_run_for_test(instance, job_name=ANALYTICS_JOB_NAME, status=dg.DagsterRunStatus.STARTED)
    with hold_run_liveness(instance, live.run_id, platform.database_url):
        # A run this process executes itself is alive from its creation, before its steps start.
        with live_in_process_run(platform.database_url) as (run_id, liveness):
            starting = create_run_for_test(instance, job_name=SYNC_JOB_NAME, run_id=run_id,
                                           status=dg.DagsterRunStatus.STARTING, tags=liveness)
            with dg.build_sensor_context(instance=instance) as context:
                assert "1 crashed run(s) marked failed" in sensor.evaluate_tick(context).skip_message
            assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
            assert instance.get_run_by_id(starting.run_id).status == dg.DagsterRunStatus.STARTING
        # Its process gone before the run started: dead at once, without the start grace.
        with dg.build_sensor_context(instance=instance) as context:
            assert "1 crashed run(s) marked failed" in sensor.evaluate_tick(context).skip_message
        assert instance.get_run_by_id(starting.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
    [audited] = [a for a in audit_rows(platform.database_url) if a[1] == dead.run_id]
    assert audited == ("sync_run_failed", dead.run_id, "FAILURE", platform.tenant_ids[0], SYNC_JOB_NAME)

    # A cancel (from the UI) is audited by the daemon's cancel sensor.
    instance.report_run_canceled(live)
    [event] = instance.all_logs(live.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
    defs.resolve_sensor_def("audit_canceled_runs")(dg.build_run_status_sensor_context(
        sensor_name="audit_canceled_runs", dagster_event=event.dagster_event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(live.run_id)))
    [audited] = [a for a in audit_rows(platform.database_url) if a[1] == live.run_id]
    assert audited == ("sync_run_canceled", live.run_id, "CANCELED", None, ANALYTICS_JOB_NAME)


def set_connection_status(database_url: str, tenant_id: str, status: str, reason: str | None,
                          tokens: tuple[str, str] | None = None) -> None:
    """As the vault records Xero's answers (a refresh token refused: reauth_required), or a
    disconnect, which keeps no token (the database checks it). `tokens`: the (encrypted) access and
    refresh tokens the connection holds again, reconnected; else it keeps what it has."""
    access, refresh = tokens or (None, None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE app.xero_connections SET status = %(status)s, status_reason = %(reason)s, "
            "access_token = CASE WHEN %(cleared)s THEN NULL ELSE coalesce(%(access)s, access_token) END, "
            "refresh_token = CASE WHEN %(cleared)s THEN NULL ELSE coalesce(%(refresh)s, refresh_token) END, "
            "connected_at = CASE WHEN %(active)s THEN now() ELSE connected_at END "
            "WHERE tenant_id = %(tenant)s",
            {"status": status, "reason": reason, "access": access, "refresh": refresh, "tenant": tenant_id,
             "cleared": status == "disconnected", "active": status == "active"})


@pytest.mark.parametrize(("status", "reason"), [
    ("reauth_required", "Xero rejected the refresh token (invalid_grant)"),
    ("disconnected", "disconnected by the user"),
])
def test_a_tenant_that_must_reconnect_is_noted_left_out_and_comes_back_by_itself(platform, status, reason):
    from orchestration.assets.xero_raw import RAW_ASSET_KEYS
    from orchestration.definitions import defs

    paused, other = platform.tenant_ids
    resources = {"token_vault": TokenVaultResource()}
    sensor = defs.resolve_sensor_def("tenant_connections_sensor")
    schedule = defs.resolve_schedule_def("daily_tenant_sync")

    def tick(instance, cursor):
        return sensor_tick(sensor, instance, cursor)

    def scheduled(instance) -> list[str]:
        with dg.build_schedule_context(instance=instance, resources=resources,
                                       repository_def=defs.get_repository_def(),
                                       scheduled_execution_time=datetime(2026, 11, 25, 2, tzinfo=UTC)) as ctx:
            return sorted(r.partition_key for r in schedule.evaluate_tick(ctx).run_requests)

    with psycopg.connect(platform.database_url) as conn:
        tokens = conn.execute("SELECT access_token, refresh_token FROM app.xero_connections "
                              "WHERE tenant_id = %s", (paused,)).fetchone()

    def set_status(status: str, reason: str | None) -> None:
        set_connection_status(platform.database_url, paused, status, reason, tokens)

    with dg.instance_for_test() as instance:
        cursor = tick(instance, None).cursor  # first sight: both tenants new
        set_status(status, reason)
        try:
            noted = tick(instance, cursor)
            # Where a person looks: each raw asset's partition of that tenant says why it is paused.
            assert not noted.run_requests
            assert sorted(e.asset_key.path for e in noted.asset_events) == [k.path for k in RAW_ASSET_KEYS]
            for event in noted.asset_events:
                assert event.partition == paused
                assert event.metadata["connection_status"].value == status
                assert event.metadata["reason"].value == reason
                assert event.metadata["syncs"].value == "paused until the tenant reconnects"
            assert scheduled(instance) == [other]  # the schedule leaves it out
            still = tick(instance, noted.cursor)
            assert not still.run_requests and not still.asset_events  # noted once, not every tick
        finally:
            set_status("active", None)  # the user reconnected it
        back = tick(instance, still.cursor)
        [run] = back.run_requests  # synced at once, not tomorrow night
        assert run.partition_key == paused and run.run_key.startswith(f"reconnected:{paused}:")
        assert {e.metadata["connection_status"].value for e in back.asset_events} == {"active"}
        assert scheduled(instance) == sorted(platform.tenant_ids)


def test_a_tenant_that_must_reconnect_fails_once_and_the_others_in_its_sync_go_on(platform):
    """One `sync_tenants` of two tenants, as a daily cycle: the one whose tokens Xero no longer
    accepts fails at once with the reason, is not retried and is audited; the other extracts and
    is built in the same cycle."""
    ensure_synced(platform)
    paused, other = platform.tenant_ids
    platform.sandbox.advance_clock(TICK)
    invoice_id = authorised_invoice(platform, other)["InvoiceID"]
    platform.sandbox.mutate(other, "edit_invoice", invoice_id=invoice_id, reference="went on")
    set_connection_status(platform.database_url, paused, "reauth_required", "invalid_grant")
    try:
        results = {r.tenant_id: r for r in sync_tenants([paused, other], instance=platform.instance)}
    finally:
        set_connection_status(platform.database_url, paused, "active", None)

    failed, went_on = results[paused], results[other]
    assert not failed.success
    assert "must be reconnected" in failed.error and paused in failed.error, failed.error
    assert retried(platform.instance, failed.run_id) == []  # a retry cannot reconnect it
    audited = audit_rows(platform.database_url)
    assert ("sync_run_failed", failed.run_id, "FAILURE", paused, SYNC_JOB_NAME) in audited
    assert went_on.success, went_on.error
    assert went_on.analytics_run_id is not None  # its changes were built in the same cycle
    with psycopg.connect(platform.database_url) as conn:
        assert conn.execute("SELECT reference FROM analytics.invoices WHERE xero_invoice_id = %s",
                            (invoice_id,)).fetchone() == ("went on",)


def test_a_step_that_fails_for_a_passing_reason_is_retried_by_dagster_and_the_run_succeeds(platform,
                                                                                             monkeypatch):
    """Beyond the client's own retries (none left here: a run's retry budget of 0), a transient
    failure fails the step; the job's retry policy runs it again, and the run succeeds."""
    ensure_synced(platform)
    tenant = platform.tenant_ids[0]
    monkeypatch.setenv("XERO_MAX_RETRIES_PER_RUN", "0")
    rule = platform.sandbox.add_fault("503", endpoint="Invoices", tenant_id=tenant, times=1)
    try:
        [result] = sync_tenants([tenant], instance=platform.instance)
    finally:
        platform.sandbox.clear_faults()
    assert rule.fired == 1
    assert result.success, result.error
    [retry] = retried(platform.instance, result.run_id)  # the step, once, for the 503 it could not retry
    error, messages = retry.dagster_event.event_specific_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    assert any("retry budget" in m and tenant in m for m in messages), messages
    assert_invoices_equal_truth(platform)


def test_a_webhook_from_xero_starts_that_tenants_sync(platform, monkeypatch):
    from orchestration.definitions import defs
    from tests.pipeline.conftest import WEBHOOK_KEY

    changed, quiet = platform.tenant_ids
    monkeypatch.setenv("XERO_WEBHOOK_QUIET_SECONDS", "3")
    platform.sandbox.configure_webhooks(f"{platform.service_url}/xero/webhooks", WEBHOOK_KEY)

    def burst(seed: int) -> None:
        delivered = len([d for d in platform.sandbox.webhook_deliveries() if d["delivered"]])
        platform.sandbox.mutate(changed, "random", count=3, seed=seed)
        deadline = time.monotonic() + 60
        while len([d for d in platform.sandbox.webhook_deliveries() if d["delivered"]]) <= delivered:
            assert time.monotonic() < deadline, platform.sandbox.webhook_deliveries()
            time.sleep(0.2)

    sensor = defs.resolve_sensor_def("xero_webhook_sensor")

    def tick(instance):
        return sensor_tick(sensor, instance)

    with dg.instance_for_test() as instance:
        burst(9)
        first = tick(instance)  # events still arriving: wait for quiet
        assert not first.run_requests and "waiting for 3 s of quiet" in first.skip_reason.skip_message
        burst(10)  # the burst goes on across ticks
        assert not tick(instance).run_requests
        time.sleep(3.5)
        requests = tick(instance).run_requests
        assert [r.partition_key for r in requests] == [changed]  # one run for the whole burst
        assert requests[0].tags["xero-elt/trigger"] == "webhook"
        assert quiet not in instance.get_dynamic_partitions("xero_tenants")
        again = tick(instance)
        assert again.skip_reason.skip_message == "no new Xero webhook events"  # settled


def test_a_second_sync_of_the_same_tenant_waits_its_turn(platform, monkeypatch):
    from orchestration.locks import tenant_lock

    db, instance = platform.database_url, platform.instance
    tenant_id = platform.tenant_ids[0]
    holder = "test: another sync of this tenant"
    monkeypatch.setenv("XERO_TENANT_LOCK_WAIT_SECONDS", "1")
    with tenant_lock(tenant_id, holder=holder, database_url=db):  # a sync of this tenant is in progress
        [result] = sync_tenants([tenant_id], instance=instance)
    # The wait is bounded, says what it waited for and who holds it, and fails for good.
    assert not result.success
    assert f"gave up after 1 s waiting for tenant {tenant_id}'s sync lock" in result.error, result.error
    assert holder in result.error
    assert f"waiting for tenant {tenant_id}'s sync lock (held by {holder}" in run_messages(instance,
                                                                                            result.run_id)
    assert retried(instance, result.run_id) == []
    assert result.analytics_run_id is None  # nothing was extracted: no build

    # Held for a moment only: the second sync waits for it, announces it, then runs.
    monkeypatch.setenv("XERO_TENANT_LOCK_WAIT_SECONDS", "120")
    held, release = threading.Event(), threading.Event()
    waited = threading.Event()

    def hold() -> None:
        with tenant_lock(tenant_id, holder=holder, database_url=db):
            held.set()
            release.wait(120)

    def release_once_the_sync_waits() -> None:
        # The waiter's session is open (it polls the lock) while the holder has it.
        deadline = time.monotonic() + 120
        while not waited.is_set() and time.monotonic() < deadline:
            with psycopg.connect(db) as conn:
                if conn.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name LIKE 'xero-elt run % extract'").fetchone()[0]:
                    waited.set()
            time.sleep(0.1)
        time.sleep(2.5)  # a few of the waiter's polls
        release.set()

    holding = threading.Thread(target=hold)
    holding.start()
    assert held.wait(30)
    releaser = threading.Thread(target=release_once_the_sync_waits, daemon=True)
    releaser.start()
    try:
        [after] = sync_tenants([tenant_id], instance=instance)
    finally:
        release.set()
        holding.join(30)
    assert waited.is_set(), "the second sync never waited for the lock"
    assert after.success, after.error
    messages = run_messages(instance, after.run_id)
    assert f"waiting for tenant {tenant_id}'s sync lock (held by {holder}" in messages
    assert "of at most 120 s" in messages


def test_a_deleted_invoice_stays_with_status_deleted(platform):
    """Xero keeps a deleted invoice (status DELETED), and so does analytics.invoices."""
    db = platform.database_url
    tenant, other = platform.tenant_ids
    platform.sandbox.advance_clock(TICK)
    draft = platform.sandbox.mutate(tenant, "create_invoice", status="DRAFT")
    [created] = [r for r in sync_tenants(platform.tenant_ids, instance=platform.instance)
                 if r.tenant_id == tenant]
    assert created.success, created.error
    assert invoice_row(db, tenant, draft["InvoiceID"])["status"] == "DRAFT"

    platform.sandbox.advance_clock(TICK)
    platform.sandbox.mutate(tenant, "delete_invoice", invoice_id=draft["InvoiceID"])
    before = utc_now(db)
    results = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    row = invoice_row(db, tenant, draft["InvoiceID"])
    assert row is not None, "a deleted invoice must stay"
    assert row["status"] == "DELETED" and row["amount"] == Decimal(str(draft["Total"]))
    assert invoices_changed_since(db, before, tenant) == {draft["InvoiceID"]}
    assert invoices_changed_since(db, before, other) == set()  # other tenants untouched
    assert_invoices_equal_truth(platform)


def new_raw_load(database_url: str) -> str:
    """Register a completed dlt load (as dlt does at the end of a load) and return its id."""
    load_id = f"{time.time():.6f}"
    with psycopg.connect(database_url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'raw_xero' AND table_name = '_dlt_loads'").fetchall()]
        select = ", ".join("%(load_id)s" if c == "load_id" else "now()" if c == "inserted_at" else c
                           for c in columns)
        conn.execute(f"INSERT INTO raw_xero._dlt_loads ({', '.join(columns)}) "  # noqa: S608
                     f"SELECT {select} FROM raw_xero._dlt_loads WHERE status = 0 "
                     "ORDER BY load_id DESC LIMIT 1", {"load_id": load_id})
    return load_id


def add_raw_invoice_version(database_url: str, tenant_id: str, invoice_id: str, **changes) -> None:
    """Load a newer version of an invoice straight into raw, in a load of its own (as dlt would),
    copied from its latest one."""
    load_id = new_raw_load(database_url)
    with psycopg.connect(database_url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'raw_xero' AND table_name = 'invoices'").fetchall()]
        values = {"_dlt_id": uuid.uuid4().hex[:14], "_dlt_load_id": load_id, **changes}
        select = ", ".join(
            f"%({c})s" if c in values else "updated_date_utc + interval '1 second'" if c == "updated_date_utc"
            else c for c in columns)
        conn.execute(f"INSERT INTO raw_xero.invoices ({', '.join(columns)}) "  # noqa: S608
                     f"SELECT {select} FROM raw_xero.invoices WHERE tenant_id = %(tenant)s "
                     "AND invoice_id = %(invoice)s ORDER BY updated_date_utc DESC LIMIT 1",
                     {**values, "tenant": tenant_id, "invoice": invoice_id})


def ensure_synced(platform) -> None:
    """The module's first test syncs every tenant; run alone, a test does it itself."""
    if any(v is None for v in last_syncs(platform.database_url).values()):
        assert all(r.success for r in sync_tenants(platform.tenant_ids, instance=platform.instance))


def authorised_invoice(platform, tenant_id: str) -> dict:
    return next(r for r in platform.sandbox.truth_records(tenant_id, "Invoices")
                if r["Status"] == "AUTHORISED")


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)}


def test_one_tenants_bad_data_is_quarantined_without_holding_back_another_tenant(platform):
    """The build serves every tenant at once: a record that does not fit the canonical types is
    quarantined (a warning), never a failed build for everyone."""
    db = platform.database_url
    ensure_synced(platform)
    bad_tenant, good_tenant = platform.tenant_ids
    bad = authorised_invoice(platform, bad_tenant)
    add_raw_invoice_version(db, bad_tenant, bad["InvoiceID"], total=Decimal("100000000000.00"))
    platform.sandbox.advance_clock(TICK)
    good = authorised_invoice(platform, good_tenant)
    platform.sandbox.mutate(good_tenant, "edit_invoice", invoice_id=good["InvoiceID"],
                            reference="still built")

    [result] = sync_tenants([good_tenant], instance=platform.instance)
    assert result.success, result.error
    assert invoice_row(db, good_tenant, good["InvoiceID"])["reference"] == "still built"
    # The misfit is out of the canonical table (no stale figure stays), in quarantine with why.
    assert invoice_row(db, bad_tenant, bad["InvoiceID"]) is None
    reasons = quarantined(db)
    assert set(reasons) == {bad["InvoiceID"]}
    assert "amount" in reasons[bad["InvoiceID"]] and "DECIMAL(12,2)" in reasons[bad["InvoiceID"]]
    check = check_evaluations(platform.instance, result.analytics_run_id)["no_rows_invoices_quarantine_"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert pending_loads(db)[0] == 0

    # Xero's next version fits: it replaces the quarantined one.
    platform.sandbox.advance_clock(TICK)
    platform.sandbox.mutate(bad_tenant, "edit_invoice", invoice_id=bad["InvoiceID"], reference="fits again")
    [fixed] = sync_tenants([bad_tenant], instance=platform.instance)
    assert fixed.success, fixed.error
    assert quarantined(db) == {}
    assert check_evaluations(platform.instance, fixed.analytics_run_id)["no_rows_invoices_quarantine_"].passed
    assert_invoices_equal_truth(platform)


def test_a_failed_build_does_not_count_as_a_sync(platform):
    db, instance = platform.database_url, platform.instance
    ensure_synced(platform)
    tenant_id = platform.tenant_ids[1]
    before = last_syncs(db)[tenant_id]
    broken = authorised_invoice(platform, tenant_id)
    add_raw_invoice_version(db, tenant_id, broken["InvoiceID"], total=None)

    [failed] = sync_tenants([tenant_id], instance=instance)
    assert failed.run_id != failed.analytics_run_id
    assert instance.get_run_by_id(failed.run_id).status == dg.DagsterRunStatus.SUCCESS  # the extract
    assert not failed.success
    # A failed data test is about the data: named, and not retried.
    assert "analytics build" in failed.error and "not_null_stg_xero__invoices_total" in failed.error
    assert retried(instance, failed.analytics_run_id) == []
    assert ("sync_run_failed", failed.analytics_run_id, "FAILURE", None, ANALYTICS_JOB_NAME) in audit_rows(db)
    assert last_syncs(db)[tenant_id] == before
    # Nothing half-published: the canonical row is the one before, and the loads stay pending.
    assert invoice_row(db, tenant_id, broken["InvoiceID"])["amount"] == Decimal(str(broken["Total"]))
    assert pending_loads(db)[0] >= 1

    # Xero's next version is whole: the next build processes the pending loads with it.
    platform.sandbox.advance_clock(TICK)
    platform.sandbox.mutate(tenant_id, "edit_invoice", invoice_id=broken["InvoiceID"],
                            reference="whole again")
    [fixed] = sync_tenants([tenant_id], instance=instance)
    assert fixed.success, fixed.error
    assert last_syncs(db)[tenant_id] > before
    assert pending_loads(db)[0] == 0
    assert_invoices_equal_truth(platform)


def test_a_malformed_record_from_xero_is_quarantined_counted_and_healed(platform):
    """Through the sync job: Xero sends an invoice whose Total is not a number. The run succeeds,
    the rest loads, the raw asset's materialisation counts the record as quarantined, and the
    next clean read of it (here the tenant's full re-read) clears the quarantine."""
    db, instance = platform.database_url, platform.instance
    ensure_synced(platform)
    tenant = platform.tenant_ids[0]
    edited = authorised_invoice(platform, tenant)
    platform.sandbox.advance_clock(TICK)
    platform.sandbox.mutate(tenant, "edit_invoice", invoice_id=edited["InvoiceID"], reference="spoilt")
    platform.sandbox.add_fault("bad_amount", endpoint="Invoices", tenant_id=tenant, page=1, times=1)

    [result] = sync_tenants([tenant], instance=instance)
    assert result.success, result.error
    records = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    [invoices] = [r.event_log_entry.asset_materialization for r in records.records
                  if r.event_log_entry.asset_materialization.asset_key == INVOICES_RAW]
    assert invoices.metadata["xero/quarantined"].value == 1
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT tenant_id, endpoint, reason FROM raw_xero.quarantine").fetchall()
    assert len(rows) == 1 and rows[0][:2] == (tenant, "Invoices") and "is not a number" in rows[0][2]
    # The tenant's data-quality check on its invoices fails, naming the record and why.
    [evaluation] = [e.dagster_event.event_specific_data for e in instance.all_logs(
        result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event.event_specific_data.asset_key == INVOICES_RAW]
    assert not evaluation.passed and evaluation.partition == tenant
    assert evaluation.metadata["quarantined"].value == 1 and "is not a number" in evaluation.metadata[
        "records"].value
    assert tenant_check_status(instance, INVOICES_RAW)[tenant] == FAILED
    # Another tenant's run passes its own check and leaves this tenant's failure shown as it is.
    [other] = sync_tenants([platform.tenant_ids[1]], instance=instance)
    assert other.success, other.error
    status = tenant_check_status(instance, INVOICES_RAW)  # other partitions: made up by earlier tests
    assert {t: status.get(t) for t in platform.tenant_ids} == {tenant: FAILED,
                                                               platform.tenant_ids[1]: SUCCEEDED}, status

    [healed] = sync_tenants([tenant], full_refresh=True, instance=instance)
    assert healed.success, healed.error
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM raw_xero.quarantine").fetchone()[0] == 0
    assert tenant_check_status(instance, INVOICES_RAW)[tenant] == SUCCEEDED
    assert_invoices_equal_truth(platform)


INVOICES_RAW = dg.AssetKey(["raw_xero", "xero_invoices"])
FAILED, SUCCEEDED = "FAILED", "SUCCEEDED"


def tenant_check_status(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict[str, str]:
    """The latest `no_quarantined_records` result of each tenant (partition), as Dagster stores it."""
    check = dg.AssetCheckKey(asset_key, "no_quarantined_records")
    return {info.partition_key: info.latest_execution_status.value
            for info in instance.event_log_storage.get_asset_check_partition_info([check])}


def test_a_large_resource_loads_in_chunks_through_the_sync_job(platform, monkeypatch):
    """Pages of 25 and 2 pages a chunk: every resource with more than 100 records loads in several
    dlt loads, each committing its progress (a chunk reads on when Xero counts at most one page
    after it); the raw asset still counts every row it loaded, and the canonical table equals
    Xero's."""
    ensure_synced(platform)
    monkeypatch.setenv("XERO_PAGE_SIZE", "25")
    monkeypatch.setenv("XERO_PAGES_PER_CHUNK", "2")
    tenant = platform.tenant_ids[1]
    with psycopg.connect(platform.database_url) as conn:
        loads_before = conn.execute("SELECT count(*) FROM raw_xero._dlt_loads").fetchone()[0]
    [result] = sync_tenants([tenant], full_refresh=True, instance=platform.instance)
    assert result.success, result.error
    invoices = len(list(platform.sandbox.records(tenant, "Invoices", include_deleted=True)))
    assert invoices > 100 and result.fetched["invoices"] >= invoices  # every chunk's rows counted
    with psycopg.connect(platform.database_url) as conn:
        loads = conn.execute("SELECT count(*) FROM raw_xero._dlt_loads").fetchone()[0] - loads_before
    assert loads >= 2  # the first chunk of every resource, then the rest chunk by chunk
    assert_invoices_equal_truth(platform)


def test_each_dbt_models_materialisation_counts_its_rows(platform):
    """What a data engineer reads on a dbt asset: the table's rows after the build, and the rows the
    build changed (dbt's rows affected)."""
    ensure_synced(platform)
    tenant = platform.tenant_ids[0]
    platform.sandbox.advance_clock(TICK)
    invoice_id = authorised_invoice(platform, tenant)["InvoiceID"]
    platform.sandbox.mutate(tenant, "edit_invoice", invoice_id=invoice_id, reference="counted")
    [result] = sync_tenants([tenant], instance=platform.instance)
    assert result.success, result.error
    records = platform.instance.get_records_for_run(result.analytics_run_id,
                                                    of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    by_key = {r.event_log_entry.asset_materialization.asset_key.to_user_string():
              r.event_log_entry.asset_materialization.metadata for r in records}
    with psycopg.connect(platform.database_url) as conn:
        for key, table in (("analytics/invoices", "analytics.invoices"),
                           ("analytics/kpi_monthly", "analytics.kpi_monthly")):
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
            assert by_key[key]["dagster/row_count"].value == count, (key, by_key[key])
    # The build rewrote the edited invoice (and what the If-Modified-Since overlap re-read changed).
    assert by_key["analytics/invoices"]["dbt/rows_changed"].value >= 1, by_key["analytics/invoices"]
    # A model's result is its table: no value goes through an IO manager ("Handled output" lines).
    from orchestration.assets.analytics import analytics_models

    assert set(by_key) == {key.to_user_string() for key in analytics_models.keys}
    assert not platform.instance.get_records_for_run(result.analytics_run_id,
                                                     of_type=dg.DagsterEventType.HANDLED_OUTPUT).records


def test_one_model_built_from_the_ui_reports_that_model_and_its_checks_only(platform):
    """A data engineer picks one dbt asset in the UI and materialises it: dbt builds that model and
    its tests, and the run reports them, not the models dbt was not asked for."""
    from orchestration.definitions import defs

    ensure_synced(platform)
    kpis = dg.AssetKey(["analytics", "kpi_monthly"])
    # A tenant's extract waits to be published: the canonical invoices are not rebuilt by this
    # build, so the web app must not be told the tenant is synced.
    tenant = platform.tenant_ids[0]
    record_extract(platform.database_url, tenant, "an-extract-run")
    synced_before = last_syncs(platform.database_url)[tenant]
    analytics = defs.resolve_job_def(ANALYTICS_JOB_NAME)
    result = analytics.execute_in_process(instance=platform.instance, asset_selection=[kpis],
                                          raise_on_error=False)
    assert result.success
    assert last_syncs(platform.database_url)[tenant] == synced_before
    built = {m.asset_key for m in result.get_asset_materialization_events()
             for m in [m.event_specific_data.materialization]}
    assert built == {kpis}
    checked = {e.asset_key for e in result.get_asset_check_evaluations()}
    assert checked == {kpis} and len(result.get_asset_check_evaluations()) >= 3
    assert all(e.passed for e in result.get_asset_check_evaluations())
    # The next whole build publishes it.
    assert analytics.execute_in_process(instance=platform.instance).success
    assert last_syncs(platform.database_url)[tenant] > synced_before


def test_every_assets_table_name_names_a_real_table(platform):
    """`dagster/table_name` on every asset's definition (the catalog, lineage and column views)
    names a table or view that exists in the database the pipeline builds."""
    from orchestration.definitions import defs

    ensure_synced(platform)
    graph = defs.resolve_asset_graph()
    tables = {key: graph.get(key).metadata.get("dagster/table_name") for key in graph.get_all_asset_keys()}
    assert all(tables.values()), [key for key, table in tables.items() if not table]
    with psycopg.connect(platform.database_url) as conn:
        missing = [table for table in tables.values()
                   if conn.execute("SELECT to_regclass(%s)", (str(table),)).fetchone()[0] is None]
    assert missing == []


def test_a_staging_schema_from_before_arrow_loads_is_replaced(platform):
    """Earlier releases loaded records, and dlt made the raw tables and each tenant's staging
    tables with jsonb JSON columns. The Arrow loads' binary COPY cannot write jsonb: the next sync
    replaces the staging tables (they hold nothing between loads) and merges into the raw ones."""
    db = platform.database_url
    tenant = platform.tenant_ids[0]
    staging = f"raw_xero_staging_{tenant.replace('-', '')}"
    with psycopg.connect(db, autocommit=True) as conn:
        # Those releases kept a tenant's staging schema between loads (this one drops it after each).
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{staging}"')
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{staging}".invoices (LIKE raw_xero.invoices)')
        json_columns = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN (%s, 'raw_xero') AND data_type IN ('json', 'jsonb')",
            (staging,)).fetchall()
        assert (staging, "invoices", "line_items") in json_columns
        assert ("raw_xero", "invoices", "line_items") in json_columns
        for schema, table, column in json_columns:  # as an earlier release left them
            conn.execute(f'ALTER TABLE {schema}."{table}" ALTER COLUMN "{column}" TYPE jsonb')
    platform.sandbox.advance_clock(TICK)
    draft = platform.sandbox.mutate(tenant, "create_invoice", status="DRAFT")
    [result] = sync_tenants([tenant], instance=platform.instance)
    assert result.success, result.error
    assert invoice_row(db, tenant, draft["InvoiceID"])["status"] == "DRAFT"
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                            "AND data_type = 'jsonb'", (staging,)).fetchone() == (0,)
        # ... and the staging schema dlt made again for the load is gone once the extract is done.
        assert conn.execute("SELECT to_regnamespace(%s)", (staging,)).fetchone() == (None,)
    assert_invoices_equal_truth(platform)


def test_dlts_own_lookup_of_a_tenants_state_is_indexed(platform):
    """At the start of every tenant's load dlt reads that tenant's latest state: `_dlt_pipeline_state`
    by pipeline name, joined to `_dlt_loads` by load id (dlt's get_stored_state). Both tables gain a
    row per load of every tenant; the build indexes them so the look-up does not scan their history."""
    ensure_synced(platform)
    query = ("SELECT s.version, s.state FROM raw_xero._dlt_pipeline_state AS s JOIN raw_xero._dlt_loads AS l "
             "ON l.load_id = s._dlt_load_id WHERE pipeline_name = %s AND l.status = 0 "
             "ORDER BY l.load_id DESC LIMIT 1")
    pipeline = "xero_" + platform.tenant_ids[0].replace("-", "")
    with psycopg.connect(platform.database_url) as conn:
        assert conn.execute(query, (pipeline,)).fetchone() is not None  # the tenant's state is there
        conn.execute("SET enable_seqscan = off")  # these tables are small here: ask what the plan can use
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, (pipeline,)))
    assert "_dlt_pipeline_state__lookup_idx" in plan and "_dlt_loads__lookup_idx" in plan, plan
