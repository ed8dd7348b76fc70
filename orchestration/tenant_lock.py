"""A per-tenant PostgreSQL advisory lock: two syncs of one tenant never extract at once,
however they were launched (schedule, UI, CLI, backfill)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class TenantBusy(RuntimeError):
    pass


def _lock_key(tenant_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"xero-sync:{tenant_id}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def tenant_lock(tenant_id: str, database_url: str | None = None) -> Iterator[None]:
    with psycopg.connect(database_url or os.environ["DATABASE_URL"], autocommit=True) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(tenant_id),)).fetchone()[0]
        if not got:
            raise TenantBusy(f"another sync of tenant {tenant_id} is running; this run did not start")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(tenant_id),))
