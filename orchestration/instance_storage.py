"""A process that executes runs keeps its Dagster storage connections open.

Dagster's PostgreSQL storage opens a new connection for every read and write by default (NullPool,
so that idle instances hold nothing). A tenant's extract run writes about sixty events, and each
connection costs the worker ~4 ms and PostgreSQL a backend process's start: measured, that was half
of a small tenant's daily extract (2.1-2.7 s against 1.2 s pooled, bench/fleet_cycle.py). The
processes that execute runs, the daemon's run workers and `xero-elt sync`'s workers, execute one run
or many back to back, so they hold a small pool instead, as Dagster's webserver does.
"""

from __future__ import annotations

import weakref

import dagster as dg

# A statement of Dagster's own storage that takes this long is stuck: fail it rather than the run hang.
STATEMENT_TIMEOUT_MS = 120_000
# Beyond the one pooled connection, how many more threads may hold one at once (a run's steps,
# dlt's threads logging through Dagster).
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
