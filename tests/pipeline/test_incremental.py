"""Incremental syncs after changes in Xero, silent changes and full refreshes, tenants at once."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.extract_ledger import pending_loads
from orchestration.jobs import ANALYTICS_JOB_NAME
from orchestration.sync import sync_tenants
from tests import secret_watch
from tests.pipeline.test_end_to_end import (
    invoices_changed_since,
    raw_versions,
    staged_matches_truth,
    utc_now,
)
from tests.pipeline.truth import assert_invoices_equal_truth


@pytest.fixture(scope="module")
def platform(platform_factory):
    """Both tenants' first syncs at once, on an empty database: each creates the raw, staging and
    analytics tables it needs at the same moment as the other (the DDL race of first loads)."""
    p = platform_factory(seed=23, invoices_per_tenant=120)
    sync_at_once(p)
    assert_invoices_equal_truth(p)
    return p


def sync_at_once(platform) -> None:
    """As the daemon runs them: each tenant's sync in its own process (`xero-elt sync`, the
    schedule's code path), all at once, on the same raw, staging and analytics tables. Each
    process extracts its tenant, then builds the analytics; the builds take turns (the analytics
    lock), and whichever comes first builds whatever loads are pending, for both tenants."""
    from orchestration.jobs import SYNC_JOB_NAME

    instance = platform.instance
    before = {r.run_id for r in instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME))}
    cli = str(Path(sys.executable).with_name("xero-elt"))
    # Xero's answers wait until every tenant's extract is under way: the extracts overlap for sure.
    with platform.sandbox.hold_calls(timeout=120):
        procs = [subprocess.Popen([cli, "sync", "--tenant", t], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for t in platform.tenant_ids]
        deadline = time.monotonic() + 180
        while True:
            started = [r for r in instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME,
                                                                  statuses=[dg.DagsterRunStatus.STARTED]))
                       if r.run_id not in before]
            if len(started) == len(platform.tenant_ids) or any(p.poll() is not None for p in procs):
                break
            assert time.monotonic() < deadline, "the extracts never ran at the same time"
            time.sleep(0.2)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for output in outputs:
        secret_watch.record(output)
    for proc, output, tenant_id in zip(procs, outputs, platform.tenant_ids, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert re.search(rf"\[1/1\] {tenant_id} \(.*\): extract ok", output), output[-3000:]
        assert "1 of 1 tenant(s) synced" in output, output[-3000:]
        assert "analytics build ok (run" in output, output[-3000:]
    # The extract runs did overlap (else this proves nothing about concurrency).
    runs = [instance.get_run_record_by_id(run_id) for run_id in _run_ids(outputs)]
    assert len(runs) == len(platform.tenant_ids)
    assert {r.dagster_run.job_name for r in runs} == {SYNC_JOB_NAME}
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs), "the syncs ran in turn"
    # ... and neither needed its step retried: the raw tables' creation did not race (a retry
    # policy would hide a first load that failed on PostgreSQL's catalogue).
    for r in runs:
        retried = instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert not retried, [(e.dagster_event.message, str(e.dagster_event.event_specific_data.error))
                             for e in retried]
    builds = [instance.get_run_by_id(m) for out in outputs
              for m in re.findall(r"analytics build ok \(run ([0-9a-f-]{36})\)", out)]
    assert len(builds) == len(platform.tenant_ids)
    assert all(b.job_name == ANALYTICS_JOB_NAME and b.status == dg.DagsterRunStatus.SUCCESS for b in builds)
    assert pending_loads(platform.database_url)[0] == 0


def _run_ids(outputs: list[str]) -> list[str]:
    return [m.group(1) for out in outputs for m in re.finditer(r": extract ok.*\(run ([0-9a-f-]{36})\)", out)]


def changed_in_xero_since(platform, since_ms: int) -> set[str]:
    return {r["InvoiceID"] for t in platform.tenant_ids
            for r in platform.sandbox.records(t, "Invoices", include_deleted=True)
            if int(re.match(r"/Date\((\d+)", r["UpdatedDateUTC"]).group(1)) > since_ms}


def test_changes_in_xero_arrive_incrementally(platform):
    db = platform.database_url
    before = raw_versions(db)
    changed = 0
    since_ms = platform.sandbox.now_ms()
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(600)  # past the If-Modified-Since overlap, within a token's life
        done = platform.sandbox.mutate(tenant_id, "random", count=12, seed=1)
        changed += len(done["applied"])
    built = utc_now(db)
    results = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    assert len({r.analytics_run_id for r in results}) == 1  # one build for every tenant
    assert_invoices_equal_truth(platform)
    staged_matches_truth(platform)  # payments, credit notes, contacts changed with the invoices
    fetched = sum(r.fetched.get("invoices", 0) for r in results)
    # Only what changed (plus the small If-Modified-Since overlap) was fetched, not 240 invoices.
    assert 0 < fetched <= changed + 10
    assert raw_versions(db) > before
    # ... and only the invoices that changed in Xero changed in analytics.invoices.
    in_xero = changed_in_xero_since(platform, since_ms)
    assert in_xero and invoices_changed_since(db, built) == in_xero


def test_silent_changes_need_a_full_refresh(platform):
    tenant_id = platform.tenant_ids[0]
    record = next(r for r in platform.sandbox.truth_records(tenant_id, "Invoices")
                  if r["Status"] == "AUTHORISED")
    platform.sandbox.advance_clock(5)
    platform.sandbox.mutate(tenant_id, "edit_invoice", invoice_id=record["InvoiceID"],
                            reference="silently changed", silent=True)

    [incremental] = sync_tenants([tenant_id], instance=platform.instance)
    assert incremental.success, incremental.error
    assert reference_of(platform, record["InvoiceID"]) != "silently changed"  # as Xero: not bumped

    built = utc_now(platform.database_url)
    [result] = sync_tenants([tenant_id], instance=platform.instance, full_refresh=True)
    assert result.success, result.error
    assert result.fetched["invoices"] == len(list(platform.sandbox.records(tenant_id, "Invoices",
                                                                           include_deleted=True)))
    assert reference_of(platform, record["InvoiceID"]) == "silently changed"
    # Every invoice was read again; only the one that had changed has a new updated_at.
    assert invoices_changed_since(platform.database_url, built) == {record["InvoiceID"]}
    assert_invoices_equal_truth(platform)


def test_two_tenants_synced_at_the_same_time(platform):
    for tenant_id in platform.tenant_ids:
        platform.sandbox.advance_clock(600)
        platform.sandbox.mutate(tenant_id, "random", count=8, seed=2)
    sync_at_once(platform)
    assert_invoices_equal_truth(platform)
    staged_matches_truth(platform)


def reference_of(platform, invoice_id: str) -> str | None:
    import psycopg

    with psycopg.connect(platform.database_url) as conn:
        row = conn.execute("SELECT reference FROM analytics.invoices WHERE xero_invoice_id = %s",
                           (invoice_id,)).fetchone()
    return row[0] if row else None
