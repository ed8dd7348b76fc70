"""analytics.kpi_monthly against an independent computation from the sandbox's ground truth
(tests/pipeline/kpi_truth.py), every KPI, every tenant, every month, to the cent; again after an
incremental sync that pays, voids, deletes and edits invoices."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import psycopg
import pytest

from orchestration.sync import sync_tenants
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
            if (currency == base) != (unit == "currency"):
                problems.append(f"{tenant_id} {key}: unit {unit} currency {currency}")
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


def test_every_kpi_equals_the_independent_computation(platform):
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    problems = kpi_differences(platform)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])


def test_after_paying_voiding_deleting_and_editing_every_kpi_still_matches(platform):
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(3600)
        platform.sandbox.mutate(tenant_id, "random", count=25, seed=5)
    results = sync_tenants(instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    problems = kpi_differences(platform)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])
