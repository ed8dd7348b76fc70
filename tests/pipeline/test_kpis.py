"""analytics.kpi_monthly against an independent computation from the sandbox's ground truth
(tests/pipeline/kpi_truth.py), every KPI, every tenant, every month, to the cent; again after an
incremental sync that pays, voids, deletes and edits invoices."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import requests
import sqlalchemy
import yaml

from oauth_service.db import KPI_READER_ROLE, make_engine
from oauth_service.kpis import KPI_NAMES, KPI_UNITS, KpiQuery, read_kpis
from orchestration.demo import user_jwt
from orchestration.settings import DBT_PROJECT_DIR
from orchestration.sync import sync_tenants
from tests.pipeline.conftest import JWT_SECRET, USER_ID
from tests.pipeline.kpi_truth import _day, _month, expected_kpis


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(tenants=3, invoices_per_tenant=300, seed=57)


def kpi_table(database_url: str, tenant_id: str) -> dict:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT period, kpi, value, unit, currency FROM analytics.kpi_monthly "
                            "WHERE tenant_id = %s", (tenant_id,)).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def today(database_url: str):
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]


def kpi_differences(platform) -> list[str]:
    problems = []
    day = today(platform.database_url)
    for tenant_id in platform.tenant_ids:
        want = expected_kpis(platform.sandbox, tenant_id, day)
        got = kpi_table(platform.database_url, tenant_id)
        base = platform.sandbox.sandbox.tenant(tenant_id).base_currency
        for key in sorted(want.keys() - got.keys()):
            problems.append(f"{tenant_id} {key}: missing")
        for key in sorted(got.keys() - want.keys()):
            problems.append(f"{tenant_id} {key}: not expected")
        for key in sorted(want.keys() & got.keys()):
            value, unit, currency = got[key]
            expected = want[key]
            if (value is None) != (expected is None) or (value is not None and Decimal(value) != expected):
                problems.append(f"{tenant_id} {key[0]} {key[1]}: ours {value}, expected {expected}")
            if unit != KPI_UNITS[key[1]] or (currency == base) != (unit == "currency"):
                problems.append(f"{tenant_id} {key}: unit {unit} currency {currency}")
        for period in {p for p, _ in got}:  # the contract's identity, to the cent
            invoiced, credited, net = (got.get((period, k), (None,))[0] for k in (
                "revenue_invoiced", "credit_notes_issued", "revenue_net"))
            if net != invoiced - credited:
                problems.append(f"{tenant_id} {period}: revenue_net {net} <> {invoiced} - {credited}")
    return problems


def test_the_data_set_covers_what_the_kpis_must_handle(platform):
    currencies, statuses, months, bases = set(), Counter(), set(), set()
    allocations = part_paid = overdue = 0
    day = today(platform.database_url)
    for tenant_id in platform.tenant_ids:
        bases.add(platform.sandbox.sandbox.tenant(tenant_id).base_currency)
        for inv in platform.sandbox.records(tenant_id, "Invoices", include_deleted=True):
            currencies.add(inv["CurrencyCode"])
            statuses[inv["Status"]] += 1
            part_paid += inv["Status"] == "AUTHORISED" and 0 < Decimal(str(inv["AmountPaid"])) < Decimal(
                str(inv["Total"]))
            overdue += inv["Status"] == "AUTHORISED" and _day(inv.get("DueDate")) < day
            if inv["Status"] in ("AUTHORISED", "PAID"):
                months.add((tenant_id, _month(_day(inv["Date"]))))
        allocations += sum(len(c.get("Allocations") or [])
                           for c in platform.sandbox.records(tenant_id, "CreditNotes"))
    assert len(platform.tenant_ids) >= 3 and len(currencies) >= 3, currencies
    assert set(statuses) >= {"DRAFT", "SUBMITTED", "AUTHORISED", "PAID", "VOIDED", "DELETED"}, statuses
    assert allocations and part_paid and overdue
    assert len(bases) >= 2, bases
    spans = {t: sorted(m for tt, m in months if tt == t) for t in platform.tenant_ids}
    assert any(len(s) >= 13 for s in spans.values()), "a year-over-year month"
    # A month with no activity between a tenant's first document and today (the KPIs show 0 there).
    assert any(len(s) < (day.year - s[0].year) * 12 + day.month - s[0].month + 1 for s in spans.values())


def test_every_kpi_equals_the_independent_computation(platform):
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    problems = kpi_differences(platform)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])


def every_kind_of_change(platform, tenant_id: str, day) -> list[dict]:
    """One of each change that moves KPIs, aimed where it hurts: the earliest document that can be
    voided (in these data sets the tenant's first, so its first month moves), amounts and a due
    date edited, a back-dated part payment, a payment deleted (a PAID invoice open again from its
    payment's date), a credit note allocated, a draft deleted."""
    invoices = sorted(platform.sandbox.records(tenant_id, "Invoices"), key=lambda i: _day(i["Date"]))
    counted = [i for i in invoices if i["Status"] in ("AUTHORISED", "PAID")]
    untouched = [i for i in counted if i["Status"] == "AUTHORISED" and not i["AmountPaid"]
                 and not i["AmountCredited"]]
    sales = [i for i in untouched if i["Type"] == "ACCREC"]
    first, edited, moved_due, part_paid, credited = untouched[0], *sales[-4:]
    payment = next(p for p in platform.sandbox.records(tenant_id, "Payments")
                   if p["Status"] == "AUTHORISED" and _day(p["Date"]) < day.replace(day=1))
    draft = next(i for i in invoices if i["Status"] == "DRAFT")
    paid_on = max(_day(part_paid["Date"]), day.replace(day=1) - timedelta(days=40))
    return [
        {"action": "void_invoice", "invoice_id": first["InvoiceID"]},
        {"action": "edit_invoice", "invoice_id": edited["InvoiceID"],
         "lines": [{"description": "Edited", "quantity": 3, "unit_amount": "123.45",
                    "account_code": "200"}]},
        {"action": "edit_invoice", "invoice_id": moved_due["InvoiceID"],
         "due_date": (_day(moved_due["Date"]) - timedelta(days=75)).isoformat()},
        {"action": "pay_invoice", "invoice_id": part_paid["InvoiceID"], "amount": "10.00",
         "date": paid_on.isoformat()},
        {"action": "delete_payment", "payment_id": payment["PaymentID"]},
        {"action": "create_credit_note", "invoice_id": credited["InvoiceID"], "amount": "5.00"},
        {"action": "delete_invoice", "invoice_id": draft["InvoiceID"]},
    ]


def test_after_paying_voiding_deleting_and_editing_every_kpi_still_matches(platform):
    day = today(platform.database_url)
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(3600)
        changes = every_kind_of_change(platform, tenant_id, day)
        applied = platform.sandbox.mutate(tenant_id, "batch", mutations=changes)["applied"]
        assert len(applied) == len(changes)
        platform.sandbox.advance_clock(60)
        platform.sandbox.mutate(tenant_id, "random", count=25, seed=5)
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    problems = kpi_differences(platform)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])


def kpi_row_versions(database_url: str) -> dict:
    """Each KPI row's transaction id: a row the last build rewrote has a new one."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant_id, period, kpi, xmin::text FROM analytics.kpi_monthly").fetchall()
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def test_a_payment_recomputes_only_that_tenants_months_from_the_invoices_month(platform):
    tenant_id = platform.tenant_ids[1]
    day = today(platform.database_url)
    open_sales = [inv for inv in platform.sandbox.records(tenant_id, "Invoices")
                  if inv["Type"] == "ACCREC" and inv["Status"] == "AUTHORISED"]
    # the most recent open invoice dated before this month: some months before it stay as built
    invoice = max((inv for inv in open_sales if _month(_day(inv["Date"])) < _month(day)),
                  key=lambda inv: _day(inv["Date"]))
    changed_from = _month(_day(invoice["Date"]))
    before = kpi_row_versions(platform.database_url)
    assert any(t == tenant_id and period < changed_from for t, period, _ in before)

    platform.sandbox.advance_clock(60)
    platform.sandbox.mutate(tenant_id, "pay_invoice", invoice_id=invoice["InvoiceID"], amount="1.00",
                            date=day.isoformat())
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]

    after = kpi_row_versions(platform.database_url)
    rebuilt = {key for key in after if before.get(key) != after[key]}
    expected = {key for key in after if key[0] == tenant_id and key[1] >= changed_from}
    assert rebuilt == expected, (f"{len(rebuilt)} rows rebuilt, expected {len(expected)} "
                                 f"(tenant {tenant_id} from {changed_from}): "
                                 f"{sorted(rebuilt ^ expected)[:10]}")
    problems = kpi_differences(platform)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])


def get_kpis(platform, tenant_id: str, token: str | None, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{platform.service_url}/xero/tenants/{tenant_id}/kpis", params=params,
                        headers=headers, timeout=30)


def test_the_endpoint_returns_exactly_the_tables_values(platform):
    tenant = platform.tenant_ids[0]
    table = kpi_table(platform.database_url, tenant)
    periods = sorted({p for p, _ in table})
    first, last = periods[-14], periods[-1]
    r = get_kpis(platform, tenant, user_jwt(JWT_SECRET, USER_ID), **{"from": f"{first:%Y-%m}",
                                                                       "to": f"{last:%Y-%m}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenantId"] == tenant and body["lastSync"] and (body["from"], body["to"]) == (
        f"{first:%Y-%m}", f"{last:%Y-%m}")
    assert [s["kpi"] for s in body["kpis"]] == list(KPI_NAMES)
    for series in body["kpis"]:
        want = sorted((p, v) for (p, k), v in table.items() if k == series["kpi"] and first <= p <= last)
        assert len(series["values"]) == len(want) == 14
        for point, (period, (value, unit, currency)) in zip(series["values"], want, strict=True):
            assert point["period"] == f"{period:%Y-%m}"
            assert (Decimal(point["value"]) if point["value"] is not None else None) == value
            assert (series["unit"], series["currency"]) == (unit, currency)
    some = get_kpis(platform, tenant, user_jwt(JWT_SECRET, USER_ID), kpi=["cash_collected,dso_days"])
    assert [s["kpi"] for s in some.json()["kpis"]] == ["cash_collected", "dso_days"]
    assert len(some.json()["kpis"][0]["values"]) == 12  # default: the last 12 months


def test_the_endpoint_refuses_strangers_and_bad_questions(platform):
    tenant = platform.tenant_ids[0]
    assert get_kpis(platform, tenant, None).status_code == 401
    assert get_kpis(platform, tenant, user_jwt("not-the-secret-" + "y" * 32, USER_ID)).status_code == 401
    other_user = user_jwt(JWT_SECRET, "0a1b2c3d-0000-4000-8000-000000000000")
    assert get_kpis(platform, tenant, other_user).status_code == 404
    token = user_jwt(JWT_SECRET, USER_ID)
    for params in ({"from": "2026-13"}, {"to": "26-01"}, {"from": "2026-05", "to": "2026-01"},
                   {"kpi": "revenue"}):
        r = get_kpis(platform, tenant, token, **params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["detail"]


def test_the_kpi_reader_role_reads_the_kpi_table_only(platform):
    with psycopg.connect(platform.database_url) as conn:
        conn.execute(f"SET ROLE {KPI_READER_ROLE}")
        assert conn.execute("SELECT count(*) FROM analytics.kpi_monthly").fetchone()[0] > 0
        for table in ("app.xero_connections", "raw_xero.invoices", "analytics.invoices",
                      "staging.stg_xero__invoices"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608


def test_the_endpoint_reads_as_the_kpi_reader_role(platform):
    tenant = platform.tenant_ids[0]
    query = KpiQuery.parse(None, None, None, today(platform.database_url))
    engine = make_engine(platform.database_url, pool_size=1)
    try:
        with engine.connect() as conn, conn.begin():
            series = read_kpis(conn, tenant, query)
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == KPI_READER_ROLE
            refused = pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied")
            with refused, conn.begin_nested():
                conn.execute(sqlalchemy.text("SELECT 1 FROM app.xero_connections LIMIT 1"))
    finally:
        engine.dispose()
    assert [len(s["values"]) for s in series] == [12] * len(KPI_NAMES)


def test_the_endpoint_is_in_the_openapi_document(platform):
    spec = requests.get(f"{platform.service_url}/openapi.json", timeout=30).json()
    route = spec["paths"]["/xero/tenants/{tenant_id}/kpis"]["get"]
    assert {"200", "400", "401", "404"} <= set(route["responses"])
    assert {p["name"] for p in route["parameters"]} >= {"tenant_id", "from", "to", "kpi"}


def test_the_kpi_names_are_the_dictionarys():
    doc = yaml.safe_load((DBT_PROJECT_DIR / "models" / "marts" / "_kpis.yml").read_text())
    column = next(c for c in doc["models"][0]["columns"] if c["name"] == "kpi")
    accepted = next(t["accepted_values"]["arguments"]["values"] for t in column["data_tests"]
                    if isinstance(t, dict) and "accepted_values" in t)
    assert tuple(accepted) == KPI_NAMES
    assert doc["models"][0]["description"] == "{{ doc('kpi_dictionary') }}"
    dictionary = (DBT_PROJECT_DIR / "models" / "marts" / "kpi_dictionary.md").read_text()
    rows = [line for line in dictionary.splitlines() if line.startswith("| `")]
    defined = {name for row in rows for name in re.findall(r"`(\w+)`", row.split(" | ")[0])}
    assert defined == set(KPI_NAMES)
    for row in rows:  # each with its unit and a definition
        names, unit, meaning = row.strip("| ").split(" | ")
        assert {u.strip() for u in unit.split(",")} <= {KPI_UNITS[n] for n in re.findall(r"`(\w+)`", names)}
        assert len(meaning) > 40, row


def test_the_cli_prints_a_tenants_kpi_table(platform):
    tenant = platform.tenant_ids[0]
    xero_elt = str(Path(sys.executable).with_name("xero-elt"))
    table = kpi_table(platform.database_url, tenant)
    last = max(p for p, _ in table)
    for months, args in ((3, ["--months", "3"]), (12, [])):  # 12 by default
        out = subprocess.run([xero_elt, "kpis", "--tenant", tenant, *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[-1] == f"{last:%Y-%m}" and len(lines[0].split()) == 2 + months
        cash = next(line for line in lines if line.startswith("cash_collected"))
        assert cash.split()[-1] == f"{table[(last, 'cash_collected')][0]:,}"
        assert len(cash.split()) == 2 + months  # every figure its own column
        assert len(lines) == 1 + len(KPI_NAMES)
    bad = subprocess.run([xero_elt, "kpis", "--tenant", tenant, "--months", "0"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--months must be between 1 and 240" in bad.stderr


def test_the_kpi_asset_shows_each_tenants_trend_in_dagster(platform):
    event = platform.instance.get_latest_materialization_event(dg.AssetKey(["analytics", "kpi_monthly"]))
    trends = event.asset_materialization.metadata["kpi_trends"].value
    for t in platform.sandbox.tenants:
        line = next(line for line in trends.splitlines() if line.startswith(f"| {t.tenant_name} |"))
        assert line.count("`") == 6, line  # a sparkline per KPI
    assert "revenue net" in trends and "receivables outstanding" in trends


def test_a_backfill_of_two_chosen_tenants_reads_those_two_again_and_no_other(platform):
    """What a data engineer runs for a chosen set (`xero-elt sync --tenant A --tenant B
    --full-refresh`, or the UI's backfill of those partitions): changes Xero made without bumping
    UpdatedDateUTC, which only a full re-read finds, reach the canonical table for those two, and
    the third tenant is neither read nor rebuilt. Last in the module: it leaves the third tenant's
    silent change unread."""
    chosen, third = platform.tenant_ids[:2], platform.tenant_ids[2]
    platform.sandbox.advance_clock(5)
    silently: dict[str, str] = {}
    for tenant_id in platform.tenant_ids:
        record = next(r for r in platform.sandbox.truth_records(tenant_id, "Invoices")
                      if r["Status"] == "AUTHORISED")
        platform.sandbox.mutate(tenant_id, "edit_invoice", invoice_id=record["InvoiceID"],
                                reference=f"silently {tenant_id[:8]}", silent=True)
        silently[tenant_id] = record["InvoiceID"]

    def state() -> tuple[dict, dict]:
        """(the last raw load of each tenant, each silently changed invoice's canonical reference)"""
        with psycopg.connect(platform.database_url) as conn:
            loads = dict(conn.execute("SELECT tenant_id, max(_dlt_load_id) FROM raw_xero.invoices "
                                      "GROUP BY tenant_id").fetchall())
            references = {t: conn.execute(
                "SELECT reference FROM analytics.invoices WHERE xero_invoice_id = %s", (invoice_id,)
            ).fetchone()[0] for t, invoice_id in silently.items()}
        return loads, references

    loads_before, _ = state()
    results = sync_tenants(chosen, full_refresh=True, instance=platform.instance)
    assert sorted(r.tenant_id for r in results) == sorted(chosen)
    assert all(r.success for r in results), [r.error for r in results]
    for r in results:  # every invoice read again
        assert r.fetched["invoices"] == len(list(platform.sandbox.records(r.tenant_id, "Invoices",
                                                                          include_deleted=True)))
    loads_after, references = state()
    for tenant_id in chosen:
        assert loads_after[tenant_id] > loads_before[tenant_id]
        assert references[tenant_id] == f"silently {tenant_id[:8]}"
    assert loads_after[third] == loads_before[third]  # not read
    assert references[third] != f"silently {third[:8]}"  # so its silent change is not there yet
