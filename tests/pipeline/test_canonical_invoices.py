"""analytics.invoices, the platform's canonical table: equal to Xero's invoices field by field
(DELETED included) after a full sync, an incremental one, a one-tenant backfill and overlapping
runs; its contract enforced; values that don't fit quarantined; analysts read analytics only."""

from __future__ import annotations

import pytest

from orchestration.sync import sync_tenants
from tests.pipeline.truth import assert_invoices_equal_truth


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(invoices_per_tenant=300, seed=23)


def test_a_full_sync_equals_xero_field_by_field(platform):
    results = sync_tenants(instance=platform.instance)
    assert [r.success for r in results] == [True, True], [r.error for r in results]
    assert_invoices_equal_truth(platform)
