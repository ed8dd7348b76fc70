"""Every sync run leaves `app.audit_log` rows: who (Dagster), which tenant, which run, outcome.

Its start is written by the run itself (RunLivenessResource, however it was launched). Its end is
written by two paths, so every way of launching a run is covered: run-status sensors (runs
launched by the daemon: schedule, backfills, the UI; crashed runs show up as failures, cancelled
ones as cancels), and `xero-elt sync` after each in-process run. A row is written once per run
and status, whichever path comes first.
"""

from __future__ import annotations

import time

import dagster as dg
from sqlalchemy import Engine, text

from oauth_service.audit import record_audit
from orchestration.partitions import TENANT_PARTITIONS_NAME

ACTIONS = {
    dg.DagsterRunStatus.STARTED: "sync_run_started",
    dg.DagsterRunStatus.SUCCESS: "sync_run_succeeded",
    dg.DagsterRunStatus.FAILURE: "sync_run_failed",
    dg.DagsterRunStatus.CANCELED: "sync_run_canceled",
}


def audit_run(instance: dg.DagsterInstance, run: dg.DagsterRun, detail: dict | None = None,
              engine: Engine | None = None) -> bool:
    """Record a run's start or end once; return False when it was already recorded. An end's row
    carries the run's figures (duration, records loaded, Xero calls), read from its own events, and
    a failure's row its error (the writer's own, else the one the run's events tell)."""
    action = ACTIONS.get(run.status)
    if action is None:
        return False
    if run.status != dg.DagsterRunStatus.STARTED:
        detail = {**run_figures(instance, run.run_id), **(detail or {})}
    if run.status == dg.DagsterRunStatus.FAILURE and not detail.get("error"):
        detail.update(failure_detail(instance, run.run_id))
    if engine is None:
        from orchestration.resources import TokenVaultResource

        engine = TokenVaultResource().get().engine  # the app login: may INSERT audit rows, not UPDATE
    tenant_id = run.tags.get("dagster/partition")
    with engine.begin() as conn:
        # Serialise the two writers on this run, then check: audit_log is append-only.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": run.run_id})
        seen = conn.execute(
            text("SELECT 1 FROM app.audit_log WHERE action = :a AND record_id = :r LIMIT 1"),
            {"a": action, "r": run.run_id},
        ).first()
        if seen:
            return False
        record_audit(
            conn,
            action,
            tenant_id=tenant_id,
            table_accessed="dagster_runs",
            record_id=run.run_id,
            outcome="success" if run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.STARTED)
            else "failure",
            metadata={
                "job": run.job_name,
                "status": run.status.value,
                "partitions_def": TENANT_PARTITIONS_NAME,
                "actor": "dagster",
                "launched_by": run.tags.get("xero-elt/launched-by") or _launcher(run),
                **(detail or {}),
            },
        )
    return True


def run_figures(instance: dg.DagsterInstance, run_id: str) -> dict:
    """What a run did, from its events: its wall time, the raw rows it loaded and its Xero calls
    (the extract's materialisations carry them; see assets/xero_raw.py)."""
    stats = instance.get_run_stats(run_id)
    started, ended = stats.start_time, stats.end_time or time.time()
    records = api_calls = 0
    materialised = dg.DagsterEventType.ASSET_MATERIALIZATION
    for record in instance.get_records_for_run(run_id, of_type=materialised, limit=1000).records:
        metadata = record.event_log_entry.asset_materialization.metadata
        records += _int(metadata.get("rows_loaded"))
        api_calls += _int(metadata.get("xero/calls"))
    return {"duration_seconds": round(ended - started, 3) if started else None,
            "records_loaded": records, "api_calls": api_calls}


def _int(value) -> int:
    return int(getattr(value, "value", value) or 0)


def failure_detail(instance: dg.DagsterInstance, run_id: str) -> dict:
    """Why a run failed, from its events: the first failed step's error (e.g. "partition … refused
    before any extract"); else, for a run failed from outside because its process died under the
    daemon's code server, the engine event that says so; else the run's own failure message."""
    kinds = dg.DagsterEventType
    logs = instance.all_logs(run_id, of_type={kinds.STEP_FAILURE, kinds.ENGINE_EVENT, kinds.RUN_FAILURE})
    for entry in logs:
        event = entry.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause.message if error.cause and not error.message.strip() else ""
            return {"error": (error.message.strip() or cause)[:500]}
    crash = [e.message for e in logs if e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
             and e.message and "Run execution process" in e.message]
    if crash:
        return {"error": f"{crash[-1]} (its worker died)"[:500], "crashed": True}
    failures = [e.message for e in logs if e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE]
    return {"error": (failures[-1] if failures else "failed, with no reason recorded")[:500]}


def _launcher(run: dg.DagsterRun) -> str:
    """What started a run the daemon launched: the schedule, a sensor, a backfill, or a person."""
    for tag, name in (("dagster/schedule_name", "schedule"), ("dagster/sensor_name", "sensor"),
                      ("dagster/backfill", "backfill")):
        if tag in run.tags:
            return f"{name} {run.tags[tag]}"
    return run.tags.get("user") or "the Dagster UI or API"
