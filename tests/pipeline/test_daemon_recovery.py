"""The same through the daemon: a run worker that the daemon launched (here for the tenant
connections sensor's first syncs) is killed with SIGKILL; the recover_crashed_runs sensor marks
its run failed and audits it, the run is retried and succeeds, nothing is left waiting, the
analytics build follows, every tenant's data equals the sandbox's, and the schedule's next tick
(every minute here) syncs every tenant again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration.extract_ledger import pending_loads
from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME
from orchestration.run_health import LIVENESS_TAG
from orchestration.settings import REPO_ROOT
from tests.pipeline.truth import assert_invoices_equal_truth

DAGSTER_DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(invoices_per_tenant=200, seed=41)


@pytest.fixture
def daemon(platform, tmp_path):
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([DAGSTER_DAEMON, "run", "-w", str(REPO_ROOT / "workspace.yaml")],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "XERO_SYNC_SCHEDULE": "* * * * *"})
    yield tmp_path / "daemon.log"
    os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # The code servers the daemon started outlive a SIGTERM to the group: nothing of it may stay.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()


def wait_for(condition, timeout: float, what: str, log_path: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; daemon log tail:\n"
                         + "\n".join(log_path.read_text().splitlines()[-40:]))


def test_a_killed_run_worker_is_failed_audited_retried_and_blocks_nothing(platform, daemon):
    instance = platform.instance
    first, second = platform.tenant_ids
    # Xero is slow on the first tenant's first invoices page: its run worker is alive while we look.
    platform.sandbox.add_fault("slow", endpoint="Invoices", tenant_id=first, page=1, seconds=30, times=1)

    def live_run_of_first():
        runs = instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=[dg.DagsterRunStatus.STARTED],
                                               tags={"dagster/partition": first}))
        return next((r for r in runs if LIVENESS_TAG in r.tags), None)

    victim = wait_for(live_run_of_first, 300, "the daemon to launch the first tenant's first sync", daemon)
    worker_pid = int(victim.tags[LIVENESS_TAG].rsplit(":", 1)[1])
    os.kill(worker_pid, signal.SIGKILL)

    def reaped():
        run = instance.get_run_by_id(victim.run_id)
        return run.status == dg.DagsterRunStatus.FAILURE and run
    wait_for(reaped, 240, "the crashed run to be marked failed", daemon)
    reaped_at = datetime.now(UTC)

    def audited():
        with psycopg.connect(platform.database_url) as conn:
            return conn.execute("SELECT metadata->>'error' FROM app.audit_log "
                                "WHERE action = 'sync_run_failed' AND record_id = %s",
                                (victim.run_id,)).fetchall()
    audit = wait_for(audited, 60, "the crashed run's audit row", daemon)
    assert "died" in audit[0][0], audit

    def every_tenant_synced():
        done = {}
        for tenant in (first, second):
            runs = instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME, tags={"dagster/partition": tenant},
                                                   statuses=[dg.DagsterRunStatus.SUCCESS]))
            done[tenant] = bool(runs)
        return all(done.values())
    wait_for(every_tenant_synced, 360, "both tenants' syncs (the crashed one retried) to succeed", daemon)

    # The tenant's success above may be a scheduled run's (every minute here): the retry is the
    # auto-reexecution daemon's, launched when it has read the failure. Waited for, not assumed done.
    def retry_finished():
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": victim.run_id}))
        return runs if runs and runs[0].is_finished else None
    retried = wait_for(retry_finished, 360, "the crashed run's retry to finish", daemon)

    def analytics_caught_up():
        runs = instance.get_runs(dg.RunsFilter(job_name=ANALYTICS_JOB_NAME))
        return (runs and runs[0].status == dg.DagsterRunStatus.SUCCESS
                and pending_loads(platform.database_url)[0] == 0
                and not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED,
                                                                  dg.DagsterRunStatus.STARTED])))
    wait_for(analytics_caught_up, 360, "the analytics build after the extracts", daemon)
    assert retried[0].status == dg.DagsterRunStatus.SUCCESS, "\n".join(
        f"{e.level} {e.user_message} {e.dagster_event.event_specific_data if e.dagster_event else ''}"
        for e in instance.all_logs(retried[0].run_id) if e.level >= 30)
    assert_invoices_equal_truth(platform)

    def scheduled_runs_succeeded():
        return all(
            any(r.status == dg.DagsterRunStatus.SUCCESS for r in instance.get_runs(dg.RunsFilter(
                job_name=SYNC_JOB_NAME, created_after=reaped_at,
                tags={"dagster/partition": tenant, "dagster/schedule_name": "daily_tenant_sync"})))
            for tenant in (first, second))
    wait_for(scheduled_runs_succeeded, 240, "every tenant's next scheduled run to succeed", daemon)
