"""Xero's app-wide minute (10,000 calls across every tenant), shared by every worker through PostgreSQL.

Each tenant's client paces its own minute (xero_source/pacing.py), but tenants extract at once in
many processes, on several hosts under ECS: only the database sees them all. Every call is one
short transaction on `raw_xero._xero_app_calls`, a log of the last window's calls: under an
advisory lock, drop what left the window, count the rest, and either record the call or say how
long until the oldest leaves. The window rolls like Xero's, so no burst at a minute's edge
overshoots it. A worker that dies leaves its calls to age out; nothing is held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from orchestration.locks import connect, lock_key
from orchestration.settings import RAW_SCHEMA
from xero_source.pacing import CLOCK_SLACK_SECONDS

CALLS = sql.Identifier(RAW_SCHEMA, "_xero_app_calls")
_KEY = lock_key("xero app minute")
# Keep a little of the app's minute unused: its own calls (the OAuth service's) and clock skew.
MARGIN_SHARE = 0.02

log = logging.getLogger(__name__)


class PostgresAppBudget:
    def __init__(self, database_url: str, per_minute: int, window_seconds: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.database_url = database_url
        self.allowed = max(1, per_minute - max(1, int(per_minute * MARGIN_SHARE)))
        self.window = window_seconds
        self.sleep = sleep
        self._conn: psycopg.Connection | None = None
        self.waited_seconds = 0.0

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = self._conn = connect(self.database_url, "xero-elt app budget")
            with conn.transaction():
                # Two first workers would race on CREATE ... IF NOT EXISTS (a duplicate pg_type row).
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEY,))
                for ddl in ("CREATE SCHEMA IF NOT EXISTS {schema}",
                            "CREATE TABLE IF NOT EXISTS {calls} (at timestamptz NOT NULL)",
                            "CREATE INDEX IF NOT EXISTS _xero_app_calls_at ON {calls} (at)"):
                    conn.execute(sql.SQL(ddl).format(schema=sql.Identifier(RAW_SCHEMA), calls=CALLS))
        return self._conn

    def acquire(self) -> None:
        while True:
            wait = self._try_acquire()
            if wait is None:
                return
            log.info("Xero's app-wide minute is full (%d calls): waiting %.2f s", self.allowed, wait)
            self.sleep(wait)
            self.waited_seconds += wait

    def _try_acquire(self) -> float | None:
        """Record one call and return None, or return the seconds until the window has room."""
        conn = self._connection()
        params = {"window": self.window}
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEY,))
            conn.execute(sql.SQL("DELETE FROM {} WHERE at <= clock_timestamp() - %(window)s * interval '1 s'")
                         .format(CALLS), params)
            count, wait = conn.execute(sql.SQL(
                "SELECT count(*), extract(epoch FROM min(at) - clock_timestamp()) + %(window)s FROM {}"
            ).format(CALLS), params).fetchone()
            if count < self.allowed:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (clock_timestamp())").format(CALLS))
                return None
        # Xero counts a call when it arrives, we when it leaves: wait a little past the window.
        return max(0.0, float(wait)) + CLOCK_SLACK_SECONDS

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
