"""No crash holds the pipeline (issue: a killed sync kept the dbt pool slot for ever).

Through the real CLI (`xero-elt sync` in a subprocess) and a real Dagster instance on PostgreSQL:
the sync is killed with SIGKILL during a tenant's extract, between the extracts and the dbt build,
and during the dbt build while it holds the analytics lock. The next `xero-elt sync` then finishes
in bounded time, every tenant's data equals the sandbox's, and every killed run is FAILED with the
reason and audited. A sync that waits for a live holder says what it waits for, sleeps, and gives
up after the configured time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration.jobs import ANALYTICS_JOB_NAME, SYNC_JOB_NAME
from orchestration.locks import analytics_lock, tenant_lock
from orchestration.run_health import LIVENESS_TAG
from tests.pipeline.truth import assert_invoices_equal_truth

XERO_ELT = str(Path(sys.executable).with_name("xero-elt"))
BOUND_SECONDS = 240


@pytest.fixture(scope="module")
def platform(platform_factory):
    return platform_factory(invoices_per_tenant=400, seed=31)


class Sync:
    """`xero-elt sync` in its own process group, its output collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([XERO_ELT, "sync", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL the sync itself only, as an OOM kill would: its children must not outlive it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def wait(self, timeout: float = BOUND_SECONDS) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def wait_until(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_run(instance: dg.DagsterInstance, job_name: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.STARTED]))
    return next((r for r in runs if LIVENESS_TAG in r.tags), None)


def analytics_lock_held_by_a_run(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
            "AND a.application_name LIKE 'xero-elt run % analytics'"
        ).fetchone()[0] > 0


def dbt_processes(sync: Sync) -> list[str]:
    """The dbt processes the sync started (its session; other tests may be building beside it)."""
    out = subprocess.run(["pgrep", "-s", str(sync.proc.pid), "-af", "xero-elt-dbt|bin/dbt build"],
                         capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def crashed_audit_rows(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT record_id, metadata->>'error' FROM app.audit_log "
                            "WHERE action = 'sync_run_failed' AND metadata->>'crashed' = 'true'").fetchall()
    return dict(rows)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_killed_syncs_never_hold_the_next_one(platform):
    instance, db = platform.instance, platform.database_url
    first, second = platform.tenant_ids
    killed: list[str] = []

    # 1. During the first tenant's extract: Xero is slow on its first invoices page.
    platform.sandbox.add_fault("slow", endpoint="Invoices", tenant_id=first, page=1, seconds=20, times=1)
    sync = Sync()
    run = wait_until(lambda: live_run(instance, SYNC_JOB_NAME), what="an extract run")
    sync.kill()
    killed.append(run.run_id)
    platform.sandbox.clear_faults()

    # 2. Between the extracts and the dbt build: another build holds the analytics lock, so the
    #    sync's build waits, announcing it; kill it there.
    with analytics_lock(holder="test: a build by hand", database_url=db):
        sync = Sync()
        wait_until(lambda: "waiting for the analytics (dbt) build lock" in sync.output, timeout=180,
                   what="the sync to wait for the analytics lock")
        assert "test: a build by hand" in sync.output  # it names the holder
        killed.append(live_run(instance, ANALYTICS_JOB_NAME).run_id)
        sync.kill()

    # 3. During the dbt build, while it holds the analytics lock.
    sync = Sync("--full-refresh")

    def building():
        """The build's run, once it holds the lock and its dbt process is running (not a fixed
        sleep: on a fast machine the whole build is over within a second)."""
        run = live_run(instance, ANALYTICS_JOB_NAME)
        return run if run and analytics_lock_held_by_a_run(db) and dbt_processes(sync) else None

    run = wait_until(building, timeout=180, what="a dbt build holding the lock")
    sync.kill()
    killed.append(run.run_id)
    # dbt died with its parent (PR_SET_PDEATHSIG): nothing builds behind the next sync's back.
    wait_until(lambda: not dbt_processes(sync), timeout=15, what="the killed sync's dbt to exit")

    # The next sync: bounded, correct, and it reaps every killed run.
    sync = Sync()
    assert sync.wait() == 0, sync.output
    # Each sync reaped the run killed before it; this one the dbt build's.
    assert f"run {killed[-1]} ({ANALYTICS_JOB_NAME}) marked failed" in sync.output, sync.output
    for run_id in killed:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE, (run_id, run.status)
    audits = crashed_audit_rows(db)
    for run_id in killed:
        assert run_id in audits and "died" in audits[run_id], (run_id, audits)
    assert not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert_invoices_equal_truth(platform)
    assert second in sync.output


def test_a_sync_waiting_for_a_live_holder_says_so_sleeps_and_gives_up(platform):
    tenant = platform.tenant_ids[0]
    with tenant_lock(tenant, holder="test: another sync of this tenant", database_url=platform.database_url):
        sync = Sync("--tenant", tenant, env={"XERO_TENANT_LOCK_WAIT_SECONDS": "8"})
        wait_until(lambda: f"waiting for tenant {tenant}'s sync lock" in sync.output, timeout=120,
                   what="the wait to be announced")
        assert "test: another sync of this tenant" in sync.output
        before, started = cpu_seconds(sync.proc.pid), time.monotonic()
        time.sleep(4)
        used = (cpu_seconds(sync.proc.pid) - before) / (time.monotonic() - started)
        assert used < 0.05, f"waiting used {used:.0%} of a core"  # a few percent at most
        code = sync.wait(timeout=120)
    assert code == 1, sync.output
    assert "gave up after 8 s waiting for" in sync.output, sync.output
    assert f"[1/1] {tenant}" in sync.output and "extract FAILED" in sync.output, sync.output
    errors = [line for line in sync.lines if line.startswith(f"{tenant}: ")]  # the summary's errors
    assert errors and "gave up after 8 s" in errors[0], sync.output
