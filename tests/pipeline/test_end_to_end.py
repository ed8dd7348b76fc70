"""The thin slice end to end, for two tenants: sandbox → OAuth → dlt → dbt → analytics.invoices,
through Dagster, audited; idempotent on a second run."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

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
    assert analytics_by_tenant(platform.database_url) == truth
    assert all(r.invoices == truth[r.tenant_id][0] for r in first)
    # Raw keeps every record version, DELETED ones included: at least one row per invoice.
    versions = raw_versions(platform.database_url)
    assert versions >= sum(count for count, _, _ in truth.values())

    second = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in second)
    assert analytics_by_tenant(platform.database_url) == truth
    assert raw_versions(platform.database_url) == versions, "a second run must load nothing twice"

    runs = {r.run_id for r in first + second}
    audited = audit_actions(platform.database_url)
    assert {run_id for _, run_id, _ in audited} == runs
    assert {action for action, _, _ in audited} == {"sync_run_succeeded"}
    # Every run is visible on the Dagster instance as a partition run of the sync job.
    for r in first + second:
        run = platform.instance.get_run_by_id(r.run_id)
        assert run.tags["dagster/partition"] == r.tenant_id
