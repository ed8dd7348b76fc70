"""Every sync run leaves an `app.audit_log` row: who (Dagster), which tenant, which run, outcome.

Two paths write it, so every way of launching a run is covered: run-status sensors (runs launched
by the daemon: schedule, backfills, the UI; crashed runs show up as failures), and `xero-elt sync`
after each in-process run. A row is written once per run and outcome, whichever path comes first.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy import Engine, text

from oauth_service.audit import record_audit
from orchestration.partitions import TENANT_PARTITIONS_NAME

ACTIONS = {
    dg.DagsterRunStatus.SUCCESS: "sync_run_succeeded",
    dg.DagsterRunStatus.FAILURE: "sync_run_failed",
    dg.DagsterRunStatus.CANCELED: "sync_run_canceled",
}


def audit_run(run: dg.DagsterRun, engine: Engine | None = None, detail: dict | None = None) -> bool:
    """Record a finished run once; return False when it was already recorded."""
    action = ACTIONS.get(run.status)
    if action is None:
        return False
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
            outcome="success" if run.status == dg.DagsterRunStatus.SUCCESS else "failure",
            metadata={
                "job": run.job_name,
                "status": run.status.value,
                "partitions_def": TENANT_PARTITIONS_NAME,
                "actor": "dagster",
                **(detail or {}),
            },
        )
    return True


GENERIC_FAILURE = "This run has been marked as failed from outside the execution context."


def failure_detail(instance: dg.DagsterInstance, run_id: str, message: str | None) -> dict:
    """What the audit row says of a failed run. When the run was failed from outside (its process
    died under the daemon's code server, which says so in an engine event), that event is the reason."""
    if message and message.strip() != GENERIC_FAILURE:
        return {"error": message[:500]}
    crash = [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
             if e.message and "Run execution process" in e.message]
    if crash:
        return {"error": f"{crash[-1]} (its worker died)"[:500], "crashed": True}
    return {"error": (message or "")[:500]}
