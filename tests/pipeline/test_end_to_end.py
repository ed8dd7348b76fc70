"""The thin slice end to end, for two tenants: sandbox → OAuth → dlt → dbt → analytics.invoices,
through Dagster, audited; idempotent on a second run."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg
import psycopg
import pytest

from orchestration.dbt_project import DBT_EXECUTABLE
from orchestration.settings import DBT_PROJECT_DIR
from orchestration.sync import sync_tenants


def analytics_by_tenant(database_url: str) -> dict[str, tuple[int, Decimal, set[str]]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant_id, invoice_id::text, total FROM analytics.invoices").fetchall()
    out: dict[str, tuple[int, Decimal, set[str]]] = {}
    for tenant, invoice_id, total in rows:
        count, sum_, ids = out.get(tenant, (0, Decimal(0), set()))
        ids.add(invoice_id)
        out[tenant] = (count + 1, sum_ + total, ids)
    return out


def truth_by_tenant(platform) -> dict[str, tuple[int, Decimal, set[str]]]:
    out = {}
    for tenant_id in platform.tenant_ids:
        truth = platform.sandbox.truth(tenant_id, "Invoices")
        ids = {r["InvoiceID"] for r in platform.sandbox.truth_records(tenant_id, "Invoices")}
        out[tenant_id] = (int(truth["count"]), Decimal(str(truth["total"])), ids)
    return out


def assert_invoices_match_truth(platform) -> None:
    """analytics.invoices == the sandbox's ground truth; on a difference, say which invoices and
    what raw holds of them (the clues an incremental-sync bug leaves)."""
    got, want = analytics_by_tenant(platform.database_url), truth_by_tenant(platform)
    if got == want:
        return
    clues = []
    for tenant_id, (_, _, ids) in want.items():
        have = got.get(tenant_id, (0, Decimal(0), set()))[2]
        for invoice_id in sorted((ids - have) | (have - ids)):
            sandbox = next((r for r in platform.sandbox.records(tenant_id, "Invoices", include_deleted=True)
                            if r["InvoiceID"] == invoice_id), {})
            with psycopg.connect(platform.database_url) as conn:
                raw = conn.execute(
                    "SELECT status, updated_date_utc, _dlt_load_id FROM raw_xero.invoices "
                    "WHERE invoice_id = %s ORDER BY updated_date_utc", (invoice_id,)).fetchall()
            clues.append(f"{tenant_id} {invoice_id}: sandbox {sandbox.get('Status')} "
                         f"{sandbox.get('UpdatedDateUTC')}, raw {raw}")
    raise AssertionError("analytics.invoices differs from the sandbox:\n" + "\n".join(clues))


INVOICE_COLUMNS = ("invoice_number", "invoice_type", "status", "contact_id", "contact_name", "reference",
                   "issue_date", "due_date", "currency_code", "currency_rate", "subtotal", "total_tax",
                   "total", "amount_due", "amount_paid", "amount_credited", "total_base", "updated_at")


def expected_invoice_row(record: dict) -> tuple:
    """What analytics.invoices must hold for a Xero invoice record, column by column."""
    def amount(key: str) -> Decimal:
        return Decimal(str(record[key]))

    rate = amount("CurrencyRate")
    updated_ms = int(record["UpdatedDateUTC"][6:19])
    return (
        record["InvoiceNumber"], record["Type"], record["Status"], record["Contact"]["ContactID"],
        record["Contact"]["Name"], record.get("Reference"),
        record["DateString"][:10], record["DueDateString"][:10], record["CurrencyCode"], rate,
        amount("SubTotal"), amount("TotalTax"), amount("Total"), amount("AmountDue"), amount("AmountPaid"),
        amount("AmountCredited"), (amount("Total") / rate).quantize(Decimal("0.01"), ROUND_HALF_UP),
        datetime.fromtimestamp(updated_ms / 1000, UTC),
    )


def assert_invoice_columns_match_truth(platform) -> None:
    """Every column of every invoice equals Xero's record (dates as Xero's DateString: the
    platform's sessions run in a time zone west of UTC, where a careless cast loses a day)."""
    with psycopg.connect(platform.database_url) as conn:
        for tenant_id in platform.tenant_ids:
            rows = conn.execute(
                f"SELECT invoice_id::text, {', '.join(INVOICE_COLUMNS)} FROM analytics.invoices "  # noqa: S608
                "WHERE tenant_id = %s", (tenant_id,)).fetchall()
            got = {r[0]: tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r[1:]) for r in rows}
            got = {k: v[:6] + (v[6].isoformat(), v[7].isoformat()) + v[8:] for k, v in got.items()}
            want = {r["InvoiceID"]: expected_invoice_row(r)
                    for r in platform.sandbox.truth_records(tenant_id, "Invoices")}
            assert got.keys() == want.keys(), tenant_id
            for invoice_id, expected in want.items():
                diffs = {c: (g, w) for c, g, w in zip(INVOICE_COLUMNS, got[invoice_id], expected, strict=True)
                         if g != w}
                assert not diffs, f"tenant {tenant_id} invoice {invoice_id}: (ours, Xero's) {diffs}"


# staging model, sandbox resource, its id field, the staging id column, amount column (or None)
STAGED = [
    ("stg_xero__contacts", "Contacts", "ContactID", "contact_id", None),
    ("stg_xero__payments", "Payments", "PaymentID", "payment_id", "amount"),
    ("stg_xero__credit_notes", "CreditNotes", "CreditNoteID", "credit_note_id", "total"),
    ("stg_xero__accounts", "Accounts", "AccountID", "account_id", None),
]


def staged_matches_truth(platform) -> None:
    """Every staged resource holds exactly the sandbox's current records, per tenant."""
    with psycopg.connect(platform.database_url) as conn:
        for model, resource, id_field, id_column, amount in STAGED:
            deleted = "is_deleted" if model in ("stg_xero__payments", "stg_xero__credit_notes") else "false"
            for tenant_id in platform.tenant_ids:
                rows = conn.execute(
                    f"SELECT {id_column}::text, {amount or 0} FROM analytics.{model} "  # noqa: S608
                    f"WHERE tenant_id = %s AND NOT {deleted}", (tenant_id,)).fetchall()
                truth = platform.sandbox.truth(tenant_id, resource)
                ids = {r[id_field] for r in platform.sandbox.truth_records(tenant_id, resource)}
                assert {r[0] for r in rows} == ids, (model, tenant_id)
                assert len(rows) == int(truth["count"]), (model, tenant_id)
                if amount:
                    assert sum(r[1] for r in rows) == Decimal(str(truth["total"])), (model, tenant_id)


def raw_versions(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM raw_xero.invoices").fetchone()[0]


def audit_actions(database_url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT action, record_id, metadata->>'status' FROM app.audit_log "
            "WHERE action LIKE 'sync_run_%' ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory()


def test_two_tenants_land_exactly_once(platform):
    first = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert [r.success for r in first] == [True, True], [r.error for r in first]
    truth = truth_by_tenant(platform)
    assert_invoices_match_truth(platform)
    assert_invoice_columns_match_truth(platform)
    assert all(r.invoices == truth[r.tenant_id][0] for r in first)
    staged_matches_truth(platform)
    # Raw keeps every record version, DELETED ones included: at least one row per invoice.
    versions = raw_versions(platform.database_url)
    assert versions >= sum(count for count, _, _ in truth.values())

    second = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in second)
    assert_invoices_match_truth(platform)
    assert raw_versions(platform.database_url) == versions, "a second run must load nothing twice"

    # `last_sync` (what the web app shows) is set once the tenant's analytics are built.
    synced = last_syncs(platform.database_url)
    assert all(synced[t] is not None for t in platform.tenant_ids), synced

    runs = {r.run_id for r in first + second}
    audited = audit_actions(platform.database_url)
    assert {run_id for _, run_id, _ in audited} == runs
    assert {action for action, _, _ in audited} == {"sync_run_succeeded"}
    # Every run is visible on the Dagster instance as a partition run of the sync job.
    for r in first + second:
        run = platform.instance.get_run_by_id(r.run_id)
        assert run.tags["dagster/partition"] == r.tenant_id


def test_a_tenant_that_is_not_connected_fails_once_clearly_and_is_audited(platform):
    import uuid

    import dagster as dg

    from orchestration.run_audit import audit_run
    from orchestration.sensors import audit_failed_runs

    stranger = str(uuid.uuid4())
    [result] = sync_tenants([stranger], instance=platform.instance)
    assert not result.success
    assert stranger in result.error and "not connected" in result.error
    # A permanent failure is not retried (the job retries transient failures only).
    retries = [e for e in platform.instance.all_logs(result.run_id) if e.dagster_event
               and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert retries == []
    failed = [a for a in audit_actions(platform.database_url) if a[1] == result.run_id]
    assert failed == [("sync_run_failed", result.run_id, "FAILURE")]

    # The daemon's failure sensor sees the same run later: it is not recorded twice.
    run = platform.instance.get_run_by_id(result.run_id)
    assert audit_run(run) is False
    context = dg.build_run_status_sensor_context(
        sensor_name="audit_failed_runs", dagster_instance=platform.instance,
        dagster_run=run, dagster_event=next(
            e.dagster_event for e in platform.instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.PIPELINE_FAILURE),
    ).for_run_failure()
    audit_failed_runs(context)
    assert [a for a in audit_actions(platform.database_url) if a[1] == result.run_id] == failed


def test_schedule_and_sensor_request_one_run_per_active_tenant(platform):
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.resources import TokenVaultResource

    with dg.instance_for_test() as instance:
        _check_sensor_and_schedule(platform, instance, defs, TokenVaultResource)


def _check_sensor_and_schedule(platform, instance, defs, TokenVaultResource):
    import dagster as dg

    resources = {"token_vault": TokenVaultResource()}
    sensor = defs.resolve_sensor_def("new_tenant_sensor")
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        requests = list(sensor(context))
    assert sorted(r.partition_key for r in requests) == sorted(platform.tenant_ids)
    assert sorted(instance.get_dynamic_partitions("xero_tenants")) == sorted(platform.tenant_ids)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        again = list(sensor(context))
    assert all(isinstance(r, dg.SkipReason) for r in again)  # nothing new the second time

    schedule = defs.resolve_schedule_def("daily_tenant_sync")
    with dg.build_schedule_context(instance=instance, resources=resources,
                                   repository_def=defs.get_repository_def(),
                                   scheduled_execution_time=datetime(2026, 11, 25, 2, tzinfo=UTC)) as ctx:
        runs = list(schedule.evaluate_tick(ctx).run_requests)
    assert sorted(r.partition_key for r in runs) == sorted(platform.tenant_ids)
    assert {r.run_key for r in runs} == {f"{t}:2026-11-25" for t in platform.tenant_ids}
    assert all(r.run_config["ops"]["xero_raw"]["config"]["full_refresh"] is False for r in runs)

    # Sundays re-read everything (Xero's silent changes).
    with dg.build_schedule_context(instance=instance, resources=resources,
                                   repository_def=defs.get_repository_def(),
                                   scheduled_execution_time=datetime(2026, 11, 29, 2, tzinfo=UTC)) as ctx:
        sunday = list(schedule.evaluate_tick(ctx).run_requests)
    assert len(sunday) == len(platform.tenant_ids)
    assert all(r.run_config["ops"]["xero_raw"]["config"]["full_refresh"] is True for r in sunday)
    assert all(r.tags["xero/full_refresh"] == "true" for r in sunday)


def test_a_webhook_from_xero_starts_that_tenants_sync(platform):
    import time

    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.resources import TokenVaultResource
    from tests.pipeline.conftest import WEBHOOK_KEY

    changed, quiet = platform.tenant_ids
    platform.sandbox.configure_webhooks(f"{platform.service_url}/xero/webhooks", WEBHOOK_KEY)
    platform.sandbox.mutate(changed, "random", count=3, seed=9)
    deadline = time.monotonic() + 60
    while not any(d["delivered"] for d in platform.sandbox.webhook_deliveries()):
        assert time.monotonic() < deadline, platform.sandbox.webhook_deliveries()
        time.sleep(0.2)

    sensor = defs.resolve_sensor_def("xero_webhook_sensor")
    resources = {"token_vault": TokenVaultResource()}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            requests = [r for r in sensor(context) if isinstance(r, dg.RunRequest)]
        assert [r.partition_key for r in requests] == [changed]  # one run, however many events
        assert quiet not in instance.get_dynamic_partitions("xero_tenants")
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            again = list(sensor(context))
        assert all(isinstance(r, dg.SkipReason) for r in again)  # events were settled


def test_a_second_sync_of_the_same_tenant_waits_its_turn(platform, monkeypatch):
    import threading
    import time

    from orchestration.tenant_lock import tenant_lock

    tenant_id = platform.tenant_ids[0]
    monkeypatch.setenv("XERO_TENANT_LOCK_WAIT_SECONDS", "1")
    with tenant_lock(tenant_id, platform.database_url):  # a sync of this tenant is in progress
        [result] = sync_tenants([tenant_id], instance=platform.instance)
    assert not result.success
    assert "another sync of tenant" in result.error and tenant_id in result.error

    # Held for a moment only: the second sync waits for it, then runs.
    monkeypatch.setenv("XERO_TENANT_LOCK_WAIT_SECONDS", "120")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with tenant_lock(tenant_id, platform.database_url):
            held.set()
            release.wait(60)

    waited = threading.Event()

    def release_once_the_sync_waits() -> None:
        deadline = time.monotonic() + 120
        while not waited.is_set() and time.monotonic() < deadline:
            with psycopg.connect(platform.database_url) as conn:
                if conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                ).fetchone()[0]:
                    waited.set()
            release.wait(0.1)
        release.set()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    releaser = threading.Thread(target=release_once_the_sync_waits, daemon=True)
    releaser.start()
    [after] = sync_tenants([tenant_id], instance=platform.instance)
    holder.join()
    assert waited.is_set(), "the second sync never waited for the lock"
    assert after.success, after.error


def last_syncs(database_url: str) -> dict[str, datetime | None]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT tenant_id, last_sync FROM app.xero_connections").fetchall())


def dbt_build(tenant_id: str) -> subprocess.CompletedProcess:
    """`dbt build` for one tenant, as the analytics asset runs it."""
    return subprocess.run(
        [DBT_EXECUTABLE, "build", "--vars", json.dumps({"tenant_id": tenant_id}), "--project-dir",
         str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)],
        capture_output=True, text=True, timeout=300)


def add_raw_invoice_version(database_url: str, tenant_id: str, invoice_id: str, **changes) -> None:
    """Load a version of an invoice straight into raw (as dlt would), copied from a real one."""
    with psycopg.connect(database_url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'raw_xero' AND table_name = 'invoices'").fetchall()]
        values = {"tenant_id": tenant_id, "invoice_id": invoice_id, "_dlt_id": uuid.uuid4().hex[:14],
                  **changes}
        select = ", ".join(f"%({c})s" if c in values else c for c in columns)
        conn.execute(f"INSERT INTO raw_xero.invoices ({', '.join(columns)}) "  # noqa: S608
                     f"SELECT {select} FROM raw_xero.invoices LIMIT 1", values)


def analytics_count(database_url: str, tenant_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM analytics.invoices WHERE tenant_id = %s",
                            (tenant_id,)).fetchone()[0]


def test_deleting_a_tenants_last_invoice_empties_it(platform):
    """A rebuild that selects nothing for a tenant must still clear what it published before."""
    if not analytics_count(platform.database_url, platform.tenant_ids[0]):
        sync_tenants(platform.tenant_ids, instance=platform.instance)
    tenant, invoice = str(uuid.uuid4()), str(uuid.uuid4())
    add_raw_invoice_version(platform.database_url, tenant, invoice, status="DRAFT",
                            updated_date_utc=datetime(2026, 3, 1, tzinfo=UTC))
    first = dbt_build(tenant)
    assert first.returncode == 0, first.stdout[-3000:]
    assert analytics_count(platform.database_url, tenant) == 1

    add_raw_invoice_version(platform.database_url, tenant, invoice, status="DELETED",
                            updated_date_utc=datetime(2026, 3, 2, tzinfo=UTC))
    second = dbt_build(tenant)
    assert second.returncode == 0, second.stdout[-3000:]
    assert analytics_count(platform.database_url, tenant) == 0
    for tenant_id in platform.tenant_ids:  # other tenants untouched
        assert analytics_count(platform.database_url, tenant_id) == truth_by_tenant(platform)[tenant_id][0]


def test_one_tenants_bad_data_does_not_fail_another_tenants_run(platform):
    """dbt tests look at the run's tenant only."""
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    add_raw_invoice_version(platform.database_url, bad, str(uuid.uuid4()), total=None)
    add_raw_invoice_version(platform.database_url, good, str(uuid.uuid4()))
    failed = dbt_build(bad)
    assert failed.returncode != 0
    assert "not_null_stg_xero__invoices_total" in failed.stdout
    passed = dbt_build(good)
    assert passed.returncode == 0, passed.stdout[-3000:]
    assert analytics_count(platform.database_url, good) == 1


def test_a_failed_build_does_not_count_as_a_sync(platform):
    tenant_id = platform.tenant_ids[1]
    before = last_syncs(platform.database_url)[tenant_id]
    broken = str(uuid.uuid4())
    add_raw_invoice_version(platform.database_url, tenant_id, broken, total=None)
    try:
        [failed] = sync_tenants([tenant_id], instance=platform.instance)
        assert not failed.success
        # A failed data test is about the data: named, and not retried.
        assert tenant_id in failed.error and "not_null_stg_xero__invoices_total" in failed.error
        assert not [e for e in platform.instance.all_logs(failed.run_id) if e.dagster_event
                    and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert last_syncs(platform.database_url)[tenant_id] == before
    finally:
        with psycopg.connect(platform.database_url) as conn:
            conn.execute("DELETE FROM raw_xero.invoices WHERE invoice_id = %s", (broken,))
    [fixed] = sync_tenants([tenant_id], instance=platform.instance)
    assert fixed.success, fixed.error
    assert last_syncs(platform.database_url)[tenant_id] > before
