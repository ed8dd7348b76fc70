"""No crash can hold the pipeline: every sync run proves it is alive, and dead runs are reaped.

A run worker (the process executing a run: `xero-elt sync`, or the daemon's run worker) holds a
PostgreSQL advisory lock keyed by its run id for as long as it runs (`RunLivenessResource`), and
tags the run once it holds it; `xero-elt sync` takes the lock before it even creates the run
(`live_in_process_run`), so a sync killed while a run starts leaves no run alive-looking. The lock
dies with the process. So a run still STARTED in
Dagster's storage whose lock anyone can take has no worker left: `reap_dead_runs` marks it
FAILURE with the reason, frees any concurrency slot it held and audits it. `xero-elt sync` reaps
before it starts; in the daemon the `recover_crashed_runs` sensor reaps every minute, and run
monitoring (deploy/dagster.yaml) bounds a run's start and its total runtime as well.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from orchestration.instance_storage import keep_storage_connections
from orchestration.locks import connect, lock_key
from orchestration.partitions import name_tenant
from orchestration.run_audit import audit_run

LIVENESS_TAG = "xero-elt/liveness"
IN_FLIGHT = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# A run that never took its liveness lock (killed while starting up) is dead after this long: as
# long as run monitoring's start timeout (deploy/dagster.yaml), since a loaded machine may take a
# while to start a run worker and load the definitions.
START_GRACE_SECONDS = 180

log = logging.getLogger(__name__)


def _liveness_key(run_id: str) -> int:
    return lock_key(f"run:{run_id}")


# Run ids whose liveness lock this process already holds (see `live_in_process_run`).
_held_here: set[str] = set()


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def _liveness_lock(run_id: str, database_url: str) -> Iterator[bool]:
    """Hold the run's liveness lock; yields whether it was taken here (False: already held here)."""
    if run_id in _held_here:
        yield False
        return
    with connect(database_url, f"xero-elt run {run_id}") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_liveness_key(run_id),))  # unique per run: no wait
        _held_here.add(run_id)
        try:
            yield True
        finally:
            _held_here.discard(run_id)


@contextmanager
def hold_run_liveness(instance: dg.DagsterInstance, run_id: str, database_url: str) -> Iterator[None]:
    with _liveness_lock(run_id, database_url) as taken_here:
        if taken_here:
            instance.add_run_tags(run_id, {LIVENESS_TAG: _worker_name()})
        yield


@contextmanager
def live_in_process_run(database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A new run id and its liveness tag, the lock held before the run exists: for a run this process
    executes itself (`execute_in_process`). A process killed between creating the run and starting
    its steps then leaves a run the reaper sees dead at once, not one it must give the start grace."""
    run_id = str(uuid.uuid4())  # as Dagster makes them
    with _liveness_lock(run_id, database_url):
        yield run_id, {LIVENESS_TAG: _worker_name()}


class RunLivenessResource(dg.ConfigurableResource):
    """Held by every step of the sync jobs: while the run's process lives, so does its lock."""

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[RunLivenessResource]:
        if context.run is None or context.instance is None:  # e.g. a resource built in a test
            yield self
            return
        keep_storage_connections(context.instance)  # this process executes the run: its ~60 writes
        with hold_run_liveness(context.instance, context.run.run_id, os.environ["DATABASE_URL"]):
            run = context.instance.get_run_by_id(context.run.run_id)
            if run is not None and run.status == dg.DagsterRunStatus.STARTED:
                # However the run was launched (schedule, sensor, UI, CLI), it names its tenant and
                # audits its own start.
                name_tenant(context.instance, run)
                audit_run(context.instance, run)
            yield self


@dataclass(frozen=True)
class ReapedRun:
    run_id: str
    job_name: str
    tenant_id: str | None
    reason: str


def _dead_reason(conn, record: dg.RunRecord, now: float) -> str | None:
    run = record.dagster_run
    worker = run.tags.get(LIVENESS_TAG)
    if worker is None:
        # Since it started, or else since it was launched (its last status change): not since it
        # was created, which for a run that waited in the queue is long before its worker began.
        started = record.start_time or record.update_timestamp.timestamp()
        if now - started > START_GRACE_SECONDS:
            return f"its worker never reported alive within {START_GRACE_SECONDS} s of the start"
        return None
    key = _liveness_key(run.run_id)
    if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return f"its worker {worker} died (killed or crashed) without ending the run"
    return None


def reap_dead_runs(instance: dg.DagsterInstance, job_names: set[str], *, reaper: str,
                   database_url: str | None = None) -> list[ReapedRun]:
    """Mark every in-flight run of `job_names` whose worker is gone FAILURE, free what it held, audit it."""
    from orchestration.run_audit import audit_run

    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT))
    records = [r for r in records if r.dagster_run.job_name in job_names]
    if not records:
        return []
    reaped = []
    now = time.time()
    with connect(database_url or os.environ["DATABASE_URL"], f"xero-elt reaper ({reaper})") as conn:
        for record in records:
            reason = _dead_reason(conn, record, now)
            if reason is None:
                continue
            run = record.dagster_run
            message = f"run {run.run_id} marked failed by {reaper}: {reason}"
            instance.report_run_failed(run, message)
            if instance.event_log_storage.supports_global_concurrency_limits:
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            audit_run(instance, instance.get_run_by_id(run.run_id),
                      detail={"error": message, "crashed": True})
            log.warning(message)
            reaped.append(ReapedRun(run.run_id, run.job_name, run.tags.get("dagster/partition"), reason))
    return reaped
