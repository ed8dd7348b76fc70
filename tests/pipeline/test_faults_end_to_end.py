"""Xero misbehaving, all at once, through the whole pipeline (sync job, dlt, PostgreSQL, dbt): a 429
storm, 5% of calls answered 5xx, a truncated page, a dropped connection, and access tokens that
really expire mid-sync (the sandbox's clock runs 600 times faster, so a 30-minute token is dead
after 3 wall seconds while the vault still believes it; Xero's 401 makes the vault renew it, with
the refresh token's rotation). The data that lands equals a clean run's: Xero's own records."""

from __future__ import annotations

import pytest

from orchestration.sync import sync_tenants
from tests.pipeline.truth import assert_invoices_equal_truth
from xero_sandbox import FaultConfig


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(invoices_per_tenant=400, seed=51, clock_speed=600.0,
                            faults=FaultConfig(error_rate=0.05, seed=51))


def test_every_fault_at_once_ends_with_exactly_xeros_data(platform, monkeypatch):
    monkeypatch.setenv("XERO_PAGE_SIZE", "50")  # many pages, so that every fault meets one
    sb = platform.sandbox
    first, second = platform.tenant_ids
    sb.add_fault("429", times=8)  # a storm: eight calls in a row refused
    sb.add_fault("truncate", endpoint="Invoices", tenant_id=first, page=3, times=1)
    sb.add_fault("drop", endpoint="Invoices", tenant_id=second, page=2, times=1)
    sb.add_fault("drop", endpoint="Contacts", times=1)

    results = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    fired = sb.stats()["faultsFired"]
    assert fired.get("429", 0) == 8 and fired.get("truncate") == 1 and fired.get("drop") == 2, fired
    assert sum(n for kind, n in fired.items() if kind in ("500", "503")) >= 1, fired  # the random 5xx
    refused = sum(int(n) for e in sb.stats()["endpoints"] for status, n in e["status"].items()
                  if str(status) == "401")
    assert refused >= 1  # tokens did expire under the sync, and it went on with renewed ones
    assert_invoices_equal_truth(platform)
