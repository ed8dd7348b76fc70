"""Which tenants' extracts the analytics have caught up with: what `last_sync` means.

Each tenant's successful extract is noted in `raw_xero._tenant_extracts`. dbt processes every
pending dlt load at once (dbt_project/macros/load_batches.sql), so when a build that started
after an extract finished has succeeded, that tenant's analytics are as fresh as its raw data:
its connection's `last_sync` is set then, not before.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from orchestration.settings import RAW_SCHEMA

LEDGER = sql.Identifier(RAW_SCHEMA, "_tenant_extracts")
DLT_LOADS = sql.Identifier(RAW_SCHEMA, "_dlt_loads")
LOAD_BATCHES = sql.Identifier("staging", "dbt_load_batches")  # created by dbt's on-run-start


def _ensure_ledger(conn: psycopg.Connection) -> None:
    """Makes the ledger if it is not there yet. `IF NOT EXISTS` does not make two creations at once
    safe: two tenants' first extracts ending together both created it, and one failed on
    PostgreSQL's catalogue (`pg_type_typname_nsp_index`). So it is made under the advisory lock that
    dlt's schema changes in the raw dataset take (`xero_source/destination.py`): the second waits,
    then finds it, and neither races dlt making the schema."""
    if conn.execute("SELECT to_regclass(%s)", (f"{RAW_SCHEMA}._tenant_extracts",)).fetchone()[0]:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"dlt schema of {RAW_SCHEMA}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(RAW_SCHEMA)))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (tenant_id text PRIMARY KEY, run_id text NOT NULL, "
            "extracted_at timestamptz NOT NULL, published_at timestamptz)").format(LEDGER))


def record_extract(database_url: str, tenant_id: str, run_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _ensure_ledger(conn)
        conn.execute(sql.SQL(
            "INSERT INTO {} (tenant_id, run_id, extracted_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (tenant_id) DO UPDATE SET run_id = excluded.run_id, "
            "extracted_at = excluded.extracted_at, published_at = NULL").format(LEDGER),
            (tenant_id, run_id))


def database_now(database_url: str) -> datetime:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT now()").fetchone()[0]


def publish_extracts(database_url: str, built_from: datetime) -> list[str]:
    """Tenants whose extract finished before `built_from` (when a successful build started) and
    that no build published yet: mark them published and return them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        _ensure_ledger(conn)
        rows = conn.execute(sql.SQL(
            "UPDATE {} SET published_at = now() WHERE published_at IS NULL AND extracted_at <= %s "
            "RETURNING tenant_id").format(LEDGER), (built_from,)).fetchall()
    return sorted(r[0] for r in rows)


def pending_loads(database_url: str) -> tuple[int, str | None]:
    """(how many completed dlt loads no successful dbt build processed yet, the newest one's id)."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                              (f"{RAW_SCHEMA}._dlt_loads", "staging.dbt_load_batches")).fetchone()
        if exists[0] is None:
            return 0, None
        done = (sql.SQL("AND NOT EXISTS (SELECT 1 FROM {} b WHERE b.load_id = l.load_id "
                        "AND b.done_at IS NOT NULL)").format(LOAD_BATCHES)
                if exists[1] is not None else sql.SQL(""))
        count, newest = conn.execute(sql.SQL(
            "SELECT count(*), max(load_id) FROM {} l WHERE status = 0 {}").format(DLT_LOADS, done)).fetchone()
    return count, newest
