"""analytics.invoices, the platform's canonical table: equal to Xero's invoices field by field
(DELETED included) after a full sync, an incremental one, a one-tenant backfill and overlapping
runs; its contract enforced; values that don't fit quarantined; analysts read analytics only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.types.json import Jsonb

from orchestration.dbt_project import DBT_EXECUTABLE
from orchestration.settings import DBT_PROJECT_DIR, REPO_ROOT, dbt_connection_env
from orchestration.sync import sync_tenants
from tests.pipeline.truth import assert_invoices_equal_truth, base_currency

XERO_ELT = str(Path(sys.executable).with_name("xero-elt"))


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(invoices_per_tenant=300, seed=23)


def test_the_data_set_has_what_the_table_must_handle(platform):
    invoices = [i for t in platform.tenant_ids
                for i in platform.sandbox.records(t, "Invoices", include_deleted=True)]
    statuses = {"DRAFT", "SUBMITTED", "AUTHORISED", "PAID", "VOIDED", "DELETED"}
    assert {i["Status"] for i in invoices} >= statuses
    assert {i["Type"] for i in invoices} == {"ACCREC", "ACCPAY"}
    assert len({i["CurrencyCode"] for i in invoices}) >= 3
    assert any(0 < i["AmountPaid"] < i["Total"] for i in invoices)  # part payments
    assert any(i["AmountCredited"] for i in invoices)  # credit notes allocated
    assert any(i.get("FullyPaidOnDate") for i in invoices if i["Status"] == "PAID")


def test_a_full_sync_equals_xero_field_by_field(platform):
    results = sync_tenants(instance=platform.instance)
    assert [r.success for r in results] == [True, True], [r.error for r in results]
    assert_invoices_equal_truth(platform)


def synced_since(database_url: str, since) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant_id, count(*) FROM analytics.invoices WHERE synced_at >= %s "
                            "GROUP BY tenant_id", (since,)).fetchall()
    return dict(rows)


def utc_now(database_url: str):
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::timestamp").fetchone()[0]


def row_times(database_url: str) -> dict[str, tuple]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT xero_invoice_id, created_at, updated_at "
                            "FROM analytics.invoices").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_an_incremental_sync_rebuilds_only_what_changed(platform):
    before_times = row_times(platform.database_url)
    changed: set[str] = set()
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(3600)
        done = platform.sandbox.mutate(tenant_id, "random", count=10, seed=7)
        changed |= {a["id"] for a in done["applied"]}
    since = utc_now(platform.database_url)
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    assert_invoices_equal_truth(platform)
    rebuilt = sum(synced_since(platform.database_url, since).values())
    # Only the invoices in this sync's loads were rebuilt (the changed ones, plus the few the
    # If-Modified-Since overlap re-reads), not all 600.
    assert len(changed) <= rebuilt <= len(changed) + 20, (rebuilt, len(changed))
    after_times = row_times(platform.database_url)
    kept = [i for i in before_times if after_times[i][0] == before_times[i][0]]
    assert len(kept) == len(before_times)  # created_at is when a row was first built: never moves
    moved = [i for i in before_times if after_times[i][1] != before_times[i][1]]
    assert 0 < len(moved) <= rebuilt  # updated_at moves only for rows whose values changed


def test_a_backfill_of_one_tenant_reads_it_all_again_and_rebuilds_what_changed(platform):
    first, second = platform.tenant_ids
    # A change Xero made without bumping UpdatedDateUTC: only a full re-read finds it.
    record = next(r for r in platform.sandbox.truth_records(first, "Invoices") if r["Status"] == "AUTHORISED")
    platform.sandbox.advance_clock(5)
    platform.sandbox.mutate(first, "edit_invoice", invoice_id=record["InvoiceID"],
                            reference="changed silently", silent=True)
    since = utc_now(platform.database_url)
    results = sync_tenants([first], full_refresh=True, instance=platform.instance)
    assert results[0].success, results[0].error
    assert results[0].fetched["invoices"] == len(list(platform.sandbox.records(first, "Invoices",
                                                                               include_deleted=True)))
    assert_invoices_equal_truth(platform)
    # Every invoice was read again, and the same data gives the same rows: only the one that
    # changed is rebuilt, and no other tenant's.
    assert synced_since(platform.database_url, since) == {first: 1}


def test_two_tenants_syncs_that_overlap_converge(platform):
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(3600)
        platform.sandbox.mutate(tenant_id, "random", count=8, seed=99)
    syncs = [subprocess.Popen([XERO_ELT, "sync", "--tenant", t], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for t in platform.tenant_ids]
    outputs = [p.communicate(timeout=300)[0] for p in syncs]
    assert [p.returncode for p in syncs] == [0, 0], outputs
    assert_invoices_equal_truth(platform)
    with psycopg.connect(platform.database_url) as conn:
        pending = conn.execute("SELECT count(*) FROM staging.dbt_load_batches "
                               "WHERE done_at IS NULL").fetchone()
    assert pending[0] == 0


# The seed's definition of the table: (data type, length or (precision, scale)).
SEED_COLUMNS = {
    "id": ("uuid", None), "xero_invoice_id": ("character varying", 255),
    "xero_connection_id": ("uuid", None), "invoice_number": ("character varying", 100),
    "client_name": ("character varying", 255), "amount": ("numeric", (12, 2)),
    "tax_amount": ("numeric", (12, 2)), "invoice_date": ("date", None), "due_date": ("date", None),
    "paid_date": ("date", None), "status": ("character varying", 50), "line_items": ("jsonb", None),
    "synced_at": ("timestamp without time zone", None), "created_at": ("timestamp without time zone", None),
    "updated_at": ("timestamp without time zone", None),
}


def seed_schema_differences(database_url: str) -> list[str]:
    """How the built analytics.invoices differs from the seed's table, read from the catalog."""
    with psycopg.connect(database_url) as conn:
        columns = {r[0]: r[1:] for r in conn.execute(
            "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_schema = 'analytics' AND table_name = 'invoices'")}
        constraints = {(r[0], r[1]) for r in conn.execute(
            "SELECT c.contype, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.conrelid = 'analytics.invoices'::regclass")}
        indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                    "WHERE schemaname = 'analytics' AND tablename = 'invoices'").fetchall())
    problems = []
    for name, (data_type, size) in SEED_COLUMNS.items():
        if name not in columns:
            problems.append(f"column {name} missing")
            continue
        got_type, length, precision, scale = columns[name]
        got_size = (length if isinstance(size, int) else (precision, scale) if isinstance(size, tuple)
                    else None)
        if (got_type, got_size) != (data_type, size):
            problems.append(f"column {name}: {got_type} {got_size}, the seed's is {data_type} {size}")
    for want in [("p", "PRIMARY KEY (id)"), ("u", "UNIQUE (xero_invoice_id)"),
                 ("f", "FOREIGN KEY (xero_connection_id) REFERENCES app.xero_connections(id)")]:
        if want not in constraints:
            problems.append(f"constraint {want[1]} missing ({sorted(constraints)})")
    for name, column in [("idx_invoices_xero_connection_id", "xero_connection_id"),
                         ("idx_invoices_status", "status")]:
        if f"({column})" not in indexes.get(name, ""):
            problems.append(f"index {name} on ({column}) missing ({sorted(indexes)})")
    if not any(d.endswith("(tenant_id)") for d in indexes.values()):
        problems.append("no index on tenant_id")
    return problems


def test_the_table_is_the_seeds_after_a_build_and_after_a_full_refresh(platform):
    assert seed_schema_differences(platform.database_url) == []
    before = row_times(platform.database_url)
    since = utc_now(platform.database_url)
    assert build_analytics(platform, full_refresh=True).success
    # Rebuilt from all raw data: the same table, the same values, every row written anew.
    assert seed_schema_differences(platform.database_url) == []
    assert_invoices_equal_truth(platform)
    assert set(row_times(platform.database_url)) == set(before)
    assert sum(synced_since(platform.database_url, since).values()) == len(before)


def insert_raw_version(database_url: str, invoice_id: str, **changes) -> str:
    """A new version of an invoice as a load of its own (what a sync of a changed record leaves)."""
    with psycopg.connect(database_url) as conn:
        load_id = conn.execute(
            "SELECT (extract(epoch FROM clock_timestamp()))::numeric(20,6)::text").fetchone()[0]
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'raw_xero' "
            "AND table_name = 'invoices' AND column_name NOT IN ('_dlt_id', '_dlt_load_id')")]
        select = ", ".join(f"%({c})s" if c in changes else c for c in cols)
        conn.execute(f"INSERT INTO raw_xero.invoices ({', '.join(cols)}, _dlt_load_id, _dlt_id) "  # noqa: S608
                     f"SELECT {select}, %(load_id)s, md5(random()::text) FROM raw_xero.invoices "
                     "WHERE invoice_id = %(invoice_id)s ORDER BY updated_date_utc DESC LIMIT 1",
                     {**changes, "load_id": load_id, "invoice_id": invoice_id})
        conn.execute("INSERT INTO raw_xero._dlt_loads (load_id, schema_name, status, inserted_at) "
                     "VALUES (%s, 'xero', 0, now())", (load_id,))
    return load_id


def build_analytics(platform, full_refresh: bool = False) -> dg.ExecuteInProcessResult:
    from orchestration.definitions import defs
    from orchestration.jobs import ANALYTICS_JOB_NAME

    return defs.resolve_job_def(ANALYTICS_JOB_NAME).execute_in_process(
        instance=platform.instance, raise_on_error=False,
        run_config={"ops": {"analytics_models": {"config": {"full_refresh": full_refresh}}}})


def test_values_that_do_not_fit_are_quarantined_never_truncated(platform):
    tenant = platform.tenant_ids[0]
    with psycopg.connect(platform.database_url) as conn:
        victims = [r[0] for r in conn.execute(
            "SELECT xero_invoice_id FROM analytics.invoices WHERE tenant_id = %s AND status = 'AUTHORISED' "
            "AND amount_paid = 0 AND amount_credited = 0 ORDER BY xero_invoice_id LIMIT 3", (tenant,))]
    huge, long_number, odd_contact = victims
    # Xero's own answer: an amount over DECIMAL(12,2) (an edit through the sandbox's API).
    platform.sandbox.advance_clock(3600)
    platform.sandbox.mutate(tenant, "edit_invoice", invoice_id=huge,
                            lines=[{"description": "Big", "quantity": 1, "unit_amount": "20000000000.00",
                                    "account_code": "200"}])
    results = sync_tenants([tenant], instance=platform.instance)
    assert results[0].success, results[0].error
    # And a number longer than VARCHAR(100), as a new raw version.
    insert_raw_version(platform.database_url, long_number, invoice_number="N" * 120,
                       updated_date_utc=datetime.now(UTC))
    insert_raw_version(platform.database_url, odd_contact,
                       contact=Jsonb({"ContactID": "C-42", "Name": "Odd"}),
                       updated_date_utc=datetime.now(UTC))
    assert build_analytics(platform).success
    with psycopg.connect(platform.database_url) as conn:
        quarantined = dict(conn.execute(
            "SELECT xero_invoice_id, reason FROM analytics.invoices_quarantine WHERE tenant_id = %s",
            (tenant,)).fetchall())
        in_canonical = {r[0] for r in conn.execute(
            "SELECT xero_invoice_id FROM analytics.invoices WHERE xero_invoice_id = ANY(%s)", (victims,))}
    assert set(quarantined) == {huge, long_number, odd_contact}
    assert quarantined[huge].startswith("amount 2") and "does not fit DECIMAL(12,2)" in quarantined[huge], \
        quarantined[huge]
    assert quarantined[long_number] == "invoice_number is 120 characters, over VARCHAR(100)"
    assert quarantined[odd_contact] == "contact_id 'C-42' is not a UUID"
    assert not in_canonical  # never truncated, and no stale older version left behind

    # The next clean version replaces it.
    platform.sandbox.advance_clock(3600)
    platform.sandbox.mutate(tenant, "edit_invoice", invoice_id=huge,
                            lines=[{"description": "Fixed", "quantity": 1, "unit_amount": "200.00",
                                    "account_code": "200"}])
    assert sync_tenants([tenant], instance=platform.instance)[0].success
    with psycopg.connect(platform.database_url) as conn:
        still = {r[0] for r in conn.execute("SELECT xero_invoice_id FROM analytics.invoices_quarantine")}
        back = conn.execute("SELECT amount FROM analytics.invoices WHERE xero_invoice_id = %s",
                            (huge,)).fetchone()
    assert huge not in still and back is not None


def test_a_foreign_currency_document_without_a_rate_is_flagged_not_converted(platform):
    tenant = platform.tenant_ids[1]
    base = base_currency(platform.sandbox, tenant)
    foreign = "USD" if base != "USD" else "EUR"
    with psycopg.connect(platform.database_url) as conn:
        invoice_id = conn.execute("SELECT xero_invoice_id FROM analytics.invoices WHERE tenant_id = %s "
                                  "AND status = 'AUTHORISED' LIMIT 1", (tenant,)).fetchone()[0]
    insert_raw_version(platform.database_url, invoice_id, currency_code=foreign, currency_rate=None,
                       updated_date_utc=datetime.now(UTC))
    assert build_analytics(platform).success
    with psycopg.connect(platform.database_url) as conn:
        row = conn.execute("SELECT currency_code, currency_rate, base_currency, currency_rate_missing, "
                           "amount, amount_base, amount_due_base FROM analytics.invoices "
                           "WHERE xero_invoice_id = %s", (invoice_id,)).fetchone()
    assert row[:4] == (foreign, None, base, True)
    assert row[4] is not None and row[5] is None and row[6] is None  # never converted 1:1


def readme_analyst_queries() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## For analysts", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    queries = [q.strip() for block in blocks for q in block.split(";") if q.strip()]
    assert len(queries) == 5, queries
    return queries


def test_the_analyst_login_reads_analytics_and_nothing_else(platform):
    from oauth_service.db import create_analyst_login, drop_app_login

    name = f"analyst_test_{uuid.uuid4().hex[:8]}"
    url = create_analyst_login(platform.database_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM analytics.invoices").fetchone()[0] > 0
            conn.execute("SELECT count(*) FROM analytics.invoices_quarantine")
            # The README's example questions run as the analyst (the sandbox's dates are its own,
            # so "the last 12 months" may well be empty: what counts is that they run).
            for query in readme_analyst_queries():
                conn.execute(query).fetchall()
            for table in ("app.xero_connections", "app.audit_log", "raw_xero.invoices",
                          "staging.stg_xero__invoices", "staging.dbt_load_batches"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608
    finally:
        drop_app_login(platform.database_url, name)


@pytest.mark.parametrize("drift", [
    ("s.invoice_date,", "s.invoice_date::timestamp as invoice_date,"),   # a type
    ("as synced_at,", "as synced_on,"),                                   # a name
])
def test_the_contract_fails_a_build_whose_columns_drift(platform, tmp_path, drift):
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    model = project / "models" / "marts" / "invoices.sql"
    sql = model.read_text()
    assert drift[0] in sql
    model.write_text(sql.replace(drift[0], drift[1], 1))
    result = subprocess.run([DBT_EXECUTABLE, "build", "--select", "invoices", "--project-dir", str(project),
                             "--profiles-dir", str(project)], capture_output=True, text=True,
                            env={**os.environ, **dbt_connection_env()}, timeout=300)
    assert result.returncode != 0
    assert "contract" in result.stdout.lower(), result.stdout[-2000:]
    with psycopg.connect(platform.database_url) as conn:  # the built table was not touched
        columns = [r[0] for r in conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'analytics' "
            "AND table_name = 'invoices' AND column_name IN ('invoice_date', 'client_name') "
            "ORDER BY column_name")]
    assert columns == ["character varying", "date"]
