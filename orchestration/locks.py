"""PostgreSQL advisory locks: what keeps two syncs of one tenant, or two dbt builds, apart.

A session-level advisory lock belongs to a database connection, so it is freed the moment the
process that holds it dies: the server closes the session (and, with TCP keepalives set on both
ends, notices a vanished host within about a minute). No crash can keep one.

Waiting is bounded, visible and cheap: a waiter polls with `pg_try_advisory_lock` and sleeps in
between, says what it waits for and who holds it (the holder's `application_name`), and gives up
after the configured time with `LockWaitTimeout`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from oauth_service.settings import whole_number

DEFAULT_WAIT_SECONDS = 900
POLL_SECONDS = 1.0
ANNOUNCE_EVERY_SECONDS = 30.0
# The server drops a session whose client vanished (a node lost, not a process killed) after
# idle + interval × count seconds; the client's side likewise.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}

log = logging.getLogger(__name__)


class LockWaitTimeout(RuntimeError):
    """Waited the configured time for a lock another live process holds."""


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"xero-elt:{name}".encode()).digest()[:8], "big", signed=True)


def wait_seconds(variable: str) -> int:
    return whole_number(os.environ, variable, DEFAULT_WAIT_SECONDS, unit="seconds")


def connect(database_url: str, application_name: str) -> psycopg.Connection:
    conn = psycopg.connect(database_url, autocommit=True, application_name=application_name[:63],
                           **KEEPALIVES)
    # The server side of the keepalives (ignored on a Unix socket).
    conn.execute("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                 "SET tcp_keepalives_count = 3")
    return conn


def lock_holder(conn: psycopg.Connection, key: int) -> str:
    """Who holds advisory lock `key`: its session's application_name and pid, or 'nobody'.
    Advisory locks belong to a database: the same key held in another database on the server (a
    second deployment, another test run) is not this one's holder."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT a.application_name, a.pid, extract(epoch FROM now() - a.backend_start)::int "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return "nobody (just released)"
    name, pid, age = row
    return f"{name or 'another session'} (server pid {pid}, connected {age} s ago)"


@contextmanager
def advisory_lock(
    name: str,
    *,
    what: str,
    holder: str,
    wait: int,
    database_url: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the advisory lock `name` (described as `what`) while the block runs. `holder` names
    this process to waiters (e.g. "xero-elt run 1a2b… tenant X extract")."""
    announce = announce or log.warning
    key = lock_key(name)
    with connect(database_url or os.environ["DATABASE_URL"], holder) as conn:
        started = time.monotonic()
        announced_at: float | None = None
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            waited = time.monotonic() - started
            if waited >= wait:
                raise LockWaitTimeout(f"gave up after {wait} s waiting for {what}, held by "
                                      f"{lock_holder(conn, key)}")
            if announced_at is None or time.monotonic() - announced_at >= ANNOUNCE_EVERY_SECONDS:
                announce(f"waiting for {what} (held by {lock_holder(conn, key)}); "
                         f"waited {waited:.0f} s of at most {wait} s")
                announced_at = time.monotonic()
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


TENANT_LOCK_WAIT = "XERO_TENANT_LOCK_WAIT_SECONDS"
ANALYTICS_LOCK_WAIT = "XERO_ANALYTICS_LOCK_WAIT_SECONDS"


def tenant_lock(tenant_id: str, *, holder: str, database_url: str | None = None,
                announce: Callable[[str], None] | None = None):
    """One extract of a tenant at a time, however it was launched (schedule, UI, CLI, backfill)."""
    return advisory_lock(f"tenant:{tenant_id}", what=f"tenant {tenant_id}'s sync lock", holder=holder,
                         wait=wait_seconds(TENANT_LOCK_WAIT), database_url=database_url, announce=announce)


def analytics_lock(*, holder: str, database_url: str | None = None,
                   announce: Callable[[str], None] | None = None):
    """One dbt build at a time: each processes every pending load, for every tenant."""
    return advisory_lock("analytics", what="the analytics (dbt) build lock", holder=holder,
                         wait=wait_seconds(ANALYTICS_LOCK_WAIT), database_url=database_url,
                         announce=announce)
