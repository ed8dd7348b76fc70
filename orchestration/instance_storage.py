"""A process that executes runs keeps its Dagster storage connections open.

Dagster's PostgreSQL storage opens a new connection for every read and write by default (NullPool,
so that idle instances hold nothing). A tenant's extract run writes about sixty events, and each
connection costs the worker ~4 ms and PostgreSQL a backend process's start: measured, that was half
of a small tenant's daily extract (2.1-2.7 s against 1.2 s pooled, bench/fleet_cycle.py). The
processes that execute runs, the daemon's run workers and `xero-elt sync`'s workers, execute one run
or many back to back, so they hold a small pool instead, as Dagster's webserver does.

The webserver's pool keeps one connection. Storing an asset event holds one while it checks for a
table on a second, and connections beyond the kept ones are closed when given back: that was 7.5
new connections per extract run. So the pool keeps two.
"""

from __future__ import annotations

import weakref

import dagster as dg
from sqlalchemy.pool import QueuePool

# A statement of Dagster's own storage that takes this long is stuck: fail it rather than the run hang.
STATEMENT_TIMEOUT_MS = 120_000
# Connections kept open per storage: an event's write and the check it makes inside it. Threads
# writing at once beyond that (dlt's resources log through Dagster) open and close their own.
KEPT = 2
# Beyond those, how many more threads may hold one at once, opened and closed as needed.
MAX_OVERFLOW = 8
POOL_RECYCLE_SECONDS = 3600

_pooled: weakref.WeakSet[dg.DagsterInstance] = weakref.WeakSet()


def keep_storage_connections(instance: dg.DagsterInstance) -> None:
    """Pool `instance`'s storage connections from now on; once per instance, a no-op for storages
    without connections (SQLite, in-memory)."""
    if instance in _pooled:
        return
    _pooled.add(instance)
    instance.optimize_for_webserver(statement_timeout=STATEMENT_TIMEOUT_MS, pool_recycle=POOL_RECYCLE_SECONDS,
                                    max_overflow=MAX_OVERFLOW)
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        _keep_more(storage)


def _keep_more(storage: object) -> None:
    """The storage's pool, made by `optimize_for_webserver` to keep one connection, keeps `KEPT`.
    Its settings and listeners (the statement timeout set on connect) carry over: QueuePool's own
    `recreate`, with a larger size."""
    engine = getattr(storage, "_engine", None)  # dagster-postgres's storages (pinned by the lock)
    if engine is None or not isinstance(engine.pool, QueuePool):
        return
    old = engine.pool
    old._pool.maxsize = KEPT  # noqa: SLF001 (read by `recreate` as the new pool's size)
    engine.pool = old.recreate()
    old.dispose()
