"""Incremental syncs after changes in Xero, silent changes and full refreshes, tenants at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.sync import sync_tenants
from tests import secret_watch
from tests.pipeline.test_end_to_end import (
    assert_invoices_match_truth,
    raw_versions,
    staged_matches_truth,
)


@pytest.fixture(scope="module")
def platform(platform_factory):
    """Both tenants' first syncs at once, on an empty database: each creates the raw and analytics
    tables it needs at the same moment as the other (the DDL race of first loads)."""
    p = platform_factory(seed=23, invoices_per_tenant=120)
    sync_at_once(p)
    assert_invoices_match_truth(p)
    return p


def sync_at_once(platform) -> None:
    """As the daemon runs them: each tenant's run in its own process (`xero-elt sync`, the
    schedule's code path), all at once, on the same raw and analytics tables."""
    cli = str(Path(sys.executable).with_name("xero-elt"))
    procs = [subprocess.Popen([cli, "sync", "--tenant", t], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for t in platform.tenant_ids]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for output in outputs:
        secret_watch.record(output)
    for proc, output, tenant_id in zip(procs, outputs, platform.tenant_ids, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert f"{tenant_id}: run" in output and " ok;" in output
    # The runs did overlap (else this proves nothing about concurrency).
    runs = [platform.instance.get_run_record_by_id(run_id) for run_id in _run_ids(outputs)]
    assert len(runs) == len(platform.tenant_ids)
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs), "the syncs ran in turn"


def _run_ids(outputs: list[str]) -> list[str]:
    import re

    return [m.group(1) for out in outputs for m in re.finditer(r": run ([0-9a-f-]{36})", out)]


def test_changes_in_xero_arrive_incrementally(platform):
    before = raw_versions(platform.database_url)
    changed = 0
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(3600)
        done = platform.sandbox.mutate(tenant_id, "random", count=12, seed=1)
        changed += len(done["applied"])
    results = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    assert_invoices_match_truth(platform)
    staged_matches_truth(platform)  # payments, credit notes, contacts changed with the invoices
    fetched = sum(r.fetched.get("invoices", 0) for r in results)
    # Only what changed (plus the small If-Modified-Since overlap) was fetched, not 240 invoices.
    assert 0 < fetched <= changed + 10
    assert raw_versions(platform.database_url) > before


def test_silent_changes_need_a_full_refresh(platform):
    tenant_id = platform.tenant_ids[0]
    record = next(r for r in platform.sandbox.truth_records(tenant_id, "Invoices")
                  if r["Status"] == "AUTHORISED")
    platform.sandbox.advance_clock(3600)
    platform.sandbox.mutate(tenant_id, "edit_invoice", invoice_id=record["InvoiceID"],
                            reference="silently changed", silent=True)

    sync_tenants([tenant_id], instance=platform.instance)
    assert reference_of(platform, record["InvoiceID"]) != "silently changed"  # as Xero: not bumped

    [result] = sync_tenants([tenant_id], instance=platform.instance, full_refresh=True)
    assert result.success
    assert result.fetched["invoices"] == len(list(platform.sandbox.records(tenant_id, "Invoices",
                                                                           include_deleted=True)))
    assert reference_of(platform, record["InvoiceID"]) == "silently changed"
    assert_invoices_match_truth(platform)


def test_two_tenants_synced_at_the_same_time(platform):
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(600)
        platform.sandbox.mutate(tenant_id, "random", count=8, seed=2)
    sync_at_once(platform)
    assert_invoices_match_truth(platform)
    staged_matches_truth(platform)


def reference_of(platform, invoice_id: str) -> str | None:
    import psycopg

    with psycopg.connect(platform.database_url) as conn:
        row = conn.execute("SELECT reference FROM analytics.invoices WHERE invoice_id = %s",
                           (invoice_id,)).fetchone()
    return row[0] if row else None
