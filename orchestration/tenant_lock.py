"""A per-tenant PostgreSQL advisory lock: two syncs of one tenant never extract or build at once,
however they were launched (schedule, UI, CLI, backfill). A second one waits its turn, for a
bounded time (`XERO_TENANT_LOCK_WAIT_SECONDS`, default 15 minutes), then gives up."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors

DEFAULT_WAIT_SECONDS = 900


class TenantBusy(RuntimeError):
    pass


def _lock_key(tenant_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"xero-sync:{tenant_id}".encode()).digest()[:8], "big", signed=True)


def _wait_seconds() -> int:
    raw = os.environ.get("XERO_TENANT_LOCK_WAIT_SECONDS", str(DEFAULT_WAIT_SECONDS))
    try:
        return max(0, int(raw))
    except ValueError:
        raise ValueError(f"XERO_TENANT_LOCK_WAIT_SECONDS must be a whole number, got {raw!r}") from None


@contextmanager
def tenant_lock(tenant_id: str, database_url: str | None = None) -> Iterator[None]:
    wait = _wait_seconds()
    with psycopg.connect(database_url or os.environ["DATABASE_URL"], autocommit=True) as conn:
        # lock_timeout bounds the wait for an advisory lock too (0 would mean "wait forever").
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{wait * 1000 or 1}ms",))
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(tenant_id),))
        except errors.LockNotAvailable:
            raise TenantBusy(f"another sync of tenant {tenant_id} held it for {wait} s; "
                             "this run did not start") from None
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(tenant_id),))
