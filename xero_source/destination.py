"""The raw tables' destination: one PostgreSQL dataset that many tenants' pipelines load, a load
after another in one process.

**One schema change at a time.** Each tenant has a pipeline of its own (its own incremental state),
and all of them load the same `raw_xero` tables. dlt makes a dataset's tables when a pipeline's
schema is not yet stored there: it looks at what exists, then creates what is missing. Two tenants'
first loads at the same moment both saw nothing and both created the tables, and one failed on
PostgreSQL's catalogue (`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`);
two tenants bringing the same new column would fail alike. Here a dataset's schema changes are made
one at a time, under a PostgreSQL advisory lock held from the look to the commit, so the second sees
what the first made. The lock has a session of its own: dlt resets its connection after its first look
fails (no version table yet), and a reset ends the session's advisory locks.

**Connections are kept.** dlt opens a connection for everything it does in a load: an ADBC one for
every Parquet file it copies, and a SQL one (psycopg2) for every load job, copy or merge, and for the
load's start and end, about sixteen for a small tenant's daily load. Each costs PostgreSQL a backend
process, and the ADBC driver also reads PostgreSQL's whole type catalogue as it connects: 50 ms on an
empty database, 245 ms with 66 tenants' staging tables. Both kinds are kept in the process (a few of
each, whatever the database) and handed to the next user of the same database; one that failed, is
inside a transaction, or sat idle for a minute is closed instead. A kept SQL connection is handed on
with no session lock held and its search path set for its new user's dataset.

**A job run again lands once.** dlt marks a job done in the pipeline's folder just after the
destination committed it, so a process killed between the two runs that job again on the next load
(dlt resumes the package's started jobs). dlt's own jobs then loaded their rows a second time: the
staged copy failed on the staging table's unique `_dlt_id`, the state row on
`_dlt_pipeline_state`'s, and the tenant stayed stuck on that package. (Our resources' tables have no
unique `_dlt_id`, see `source._make_resource`: there a copy run again would land its rows twice,
unnoticed.) Here a job run again first takes out what its earlier run committed: a copy deletes its
file's `_dlt_id`s, a row insert skips rows already there, and a load's row in `_dlt_loads` is
written once. The merge that follows (an upsert by key) was already the same the second time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dlt
import psycopg2
import pyarrow.parquet
from dlt.common.destination.client import LoadJob, PreparedTableSchema
from dlt.common.schema.typing import C_DLT_ID, TColumnSchema, TSchemaTables
from dlt.common.schema.utils import get_columns_names_with_prop
from dlt.destinations.impl.postgres.postgres import PostgresClient, PostgresParquetCopyJob
from dlt.destinations.impl.postgres.sql_client import Psycopg2SqlClient
from dlt.destinations.insert_job_client import InsertValuesLoadJob
from dlt.destinations.sql_jobs import SqlMergeFollowupJob
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

_LOCK = "SELECT pg_advisory_{}(hashtextextended(%s, 0))"
IDLE_SECONDS = 60.0  # a kept connection idle longer is closed, not reused (the server may have)
# A load's jobs (a copy or a merge per table) run at most this many at once, each on a connection of
# its own: more only contend on a few cores, and it bounds what a load holds of the server's
# connections. Set LOAD__WORKERS to change it (dlt's own setting).
LOAD_WORKERS = 3
# Kept per kind in a process, whatever the database: as many as a load's jobs use at once. A bound,
# not per database: a process that loads into many databases one after another (a test run) must
# not keep a server's connections for ever.
KEPT_PER_PROCESS = LOAD_WORKERS


class _KeptConnections:
    """Idle connections of one kind, by connection URI, for this process: at most `KEPT_PER_PROCESS`,
    none idle for longer than `IDLE_SECONDS`."""

    def __init__(self) -> None:
        self._idle: list[tuple[str, Any, float]] = []  # (uri, connection, idle since), oldest first
        self._lock = threading.Lock()

    def take(self, uri: str) -> Any:
        """The most recently kept idle connection to `uri`, or None."""
        with self._lock:
            expired = self._expired()
            found = next((i for i in range(len(self._idle) - 1, -1, -1) if self._idle[i][0] == uri), None)
            conn = self._idle.pop(found)[1] if found is not None else None
        for old in expired:
            _close_quietly(old)
        return conn

    def give_back(self, uri: str, conn: Any) -> None:
        with self._lock:
            expired = self._expired()
            self._idle.append((uri, conn, time.monotonic()))
            while len(self._idle) > KEPT_PER_PROCESS:
                expired.append(self._idle.pop(0)[1])
        for old in expired:
            _close_quietly(old)

    def __contains__(self, conn: Any) -> bool:
        with self._lock:
            return any(kept is conn for _, kept, _ in self._idle)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn, _ in idle:
            _close_quietly(conn)

    def _expired(self) -> list[Any]:
        """Takes out (under the lock) the connections idle for too long, for the caller to close."""
        limit = time.monotonic() - IDLE_SECONDS
        expired = [conn for _, conn, since in self._idle if since <= limit]
        self._idle = [kept for kept in self._idle if kept[2] > limit]
        return expired


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # already broken: nothing more to do
        conn.close()


_KEPT = _KeptConnections()  # ADBC's
_KEPT_SQL = _KeptConnections()  # psycopg2's, for dlt's SQL client


def release_kept_connections() -> None:
    """Close the connections this process keeps: when it is done loading for now."""
    _KEPT.close_all()
    _KEPT_SQL.close_all()


atexit.register(release_kept_connections)  # closed, not dropped by the exiting process


class _Borrowed:
    """What the copy job opens `with`: the kept connection, given back when the copy succeeded."""

    def __init__(self, uri: str, conn: Any) -> None:
        self._uri, self._conn = uri, conn

    def __enter__(self) -> Any:
        return self._conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            _KEPT.give_back(self._uri, self._conn)
        else:
            _close_quietly(self._conn)  # its state after a failed copy is unknown


class _KeptConnectionCopyJob(PostgresParquetCopyJob):
    def __init__(self, file_path: str, *, run_before: bool) -> None:
        super().__init__(file_path)
        self._run_before = run_before  # dlt resumed it: an earlier run may have committed its rows

    def run(self) -> None:
        if self._run_before:
            self._delete_rows_of_an_earlier_run()
        super().run()

    def _delete_rows_of_an_earlier_run(self) -> None:
        """The rows of this file are the rows with its `_dlt_id`s (each row's id is its own)."""
        id_column = self._job_client.schema.naming.normalize_identifier(C_DLT_ID)
        ids = pyarrow.parquet.read_table(self._file_path, columns=[id_column]).column(0).to_pylist()
        sql_client = self._job_client.sql_client
        table = sql_client.make_qualified_table_name(self.load_table_name)
        with sql_client.begin_transaction():
            column = sql_client.escape_column_name(id_column)
            sql_client.execute_sql(f"DELETE FROM {table} WHERE {column} = ANY(%s)", ids)  # noqa: S608 (quoted names)

    def _connect(self) -> Any:  # dlt's job opens it `with` and commits the copy itself
        uri = self._job_client.config.credentials.to_native_representation()
        return _Borrowed(uri, _KEPT.take(uri) or super()._connect())


class _InsertOnceJob(InsertValuesLoadJob):
    """dlt's row insert (the state row of a load is one), skipping a row already there by a unique
    column (`_dlt_id`): this job's own row, committed by an earlier run of it."""

    def _insert(self, qualified_table_name: str, file_path: str) -> Iterator[list[str]]:
        for statement in super()._insert(qualified_table_name, file_path):
            *head, last = statement
            last = last.rstrip()
            if not last.endswith(";"):
                raise ValueError(f"dlt's insert of {file_path} does not end its statement with ';'")
            yield [*head, last[:-1] + " ON CONFLICT DO NOTHING;"]


class _KeptSqlClient(Psycopg2SqlClient):
    """dlt's SQL client, whose connections come from and go back to `_KEPT_SQL`."""

    def open_connection(self) -> Any:
        dsn = self.credentials.to_native_representation()
        while (conn := _KEPT_SQL.take(dsn)) is not None:
            try:
                self._conn = conn
                self._reset_connection()  # psycopg2's reset also ends any session lock
                self.execute_sql("SELECT set_config('search_path', %s, false)",
                                 f"{self.fully_qualified_dataset_name()},public")
                return self._conn
            except Exception:  # noqa: S112 (the server ended it meanwhile, e.g. dropped the database)
                _close_quietly(conn)
                self._conn = None
        return super().open_connection()  # options: search path of this client's dataset

    def close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        try:
            # Handed on only when idle outside a transaction, and without a session lock (dlt's schema
            # lock is taken and released per change; a release that never ran must not outlive us).
            if conn.autocommit and conn.get_transaction_status() == TRANSACTION_STATUS_IDLE:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock_all()")
                _KEPT_SQL.give_back(self.credentials.to_native_representation(), conn)
                return
        except Exception:  # noqa: S110 (a connection that cannot say so is closed below)
            pass
        _close_quietly(conn)


def _locked_session(dsn: str, name: str) -> Any:
    """A session (a kept one if it still works) that holds the advisory lock `name`."""
    while True:
        conn = _KEPT_SQL.take(dsn)
        fresh = conn is None
        conn = psycopg2.connect(dsn) if fresh else conn
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_LOCK.format("lock"), (name,))
            return conn
        except Exception:
            _close_quietly(conn)
            if fresh:
                raise
            # a kept one the server ended meanwhile: try the next


class _MergeByKey(SqlMergeFollowupJob):
    """dlt's merge, each staged row looked up in the table by the merge key's index. Left to the
    planner, a chunk of many rows was joined by hashing the whole table, every tenant's rows, so a
    large tenant's chunk cost more the more the fleet had loaded; a lookup per row costs the same
    whatever the table holds (and is what the planner picks for a daily load's few rows anyway)."""

    @classmethod
    def generate_sql(cls, table_chain: Sequence[PreparedTableSchema], sql_client: Any) -> list[str]:
        # SET LOCAL: for this transaction only (dlt runs a merge job's statements in one).
        return ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off",
                *super().generate_sql(table_chain, sql_client)]


class _SharedDatasetClient(PostgresClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # dlt's PostgresClient makes its Psycopg2SqlClient itself: the same client, kept connections.
        if type(self.sql_client) is not Psycopg2SqlClient:
            raise TypeError(f"dlt's PostgreSQL client now uses {type(self.sql_client).__name__}: "
                            "shared_postgres needs updating")
        self.sql_client.__class__ = _KeptSqlClient
        self._schema_locked = False  # held by this client now (see _schema_lock)

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Held on a session of its own: dlt resets its connection after an expected error (its
        first look for a stored schema finds no version table) and psycopg2's reset ends the
        session's advisory locks, so a lock taken on dlt's connection was gone by the DDL.
        Re-entered (a schema change inside another), it is already held."""
        if self._schema_locked:
            yield
            return
        name = f"dlt schema of {self.sql_client.dataset_name}"  # the staging datasets are per tenant
        dsn = self.config.credentials.to_native_representation()
        conn = _locked_session(dsn, name)
        self._schema_locked = True
        try:
            yield
        finally:
            self._schema_locked = False
            try:
                with conn.cursor() as cur:
                    cur.execute(_LOCK.format("unlock"), (name,))
                _KEPT_SQL.give_back(dsn, conn)
            except Exception:  # noqa: BLE001 (closing the session ends its lock too)
                _close_quietly(conn)

    def initialize_storage(self, truncate_tables: Iterable[str] | None = None) -> None:
        with self._schema_lock():
            super().initialize_storage(truncate_tables)

    def update_stored_schema(self, only_tables: Iterable[str] | None = None,
                             expected_update: TSchemaTables | None = None,
                             force: bool = False) -> TSchemaTables | None:
        with self._schema_lock():
            return super().update_stored_schema(only_tables, expected_update, force)

    def _make_create_table(self, qualified_name: str, table: PreparedTableSchema) -> str:
        """A staging table is UNLOGGED: its rows live from a load's COPY to its MERGE, and the load
        is done again from its files if the server stops between; logging them as well wrote every
        loaded row to the WAL twice."""
        statement = super()._make_create_table(qualified_name, table)
        if self.in_staging_dataset_mode and statement.startswith("CREATE TABLE"):
            statement = statement.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)
        return statement

    def _get_table_update_sql(self, table_name: str, new_columns: Sequence[TColumnSchema],
                              generate_alter: bool) -> list[str]:
        """A merged table is created with an index on its merge key (`<table>__record_idx`): each
        load's MERGE looks its rows up by that key, and unindexed it read the whole table, every
        tenant's, each time (4.6 s a load of 100,000 invoices into a table of a million)."""
        statements = super()._get_table_update_sql(table_name, new_columns, generate_alter)
        table = self.prepare_load_table(table_name)
        key = get_columns_names_with_prop(table, "primary_key")
        if not generate_alter and key and table.get("write_disposition") == "merge" \
                and not self.in_staging_dataset_mode:
            naming = self.sql_client.escape_column_name
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {naming(table_name + '__record_idx')} ON "
                f"{self.sql_client.make_qualified_table_name(table_name)} ({', '.join(map(naming, key))})")
        return statements

    def _create_merge_followup_jobs(self, table_chain: Sequence[PreparedTableSchema]) -> list[Any]:
        return [_MergeByKey.from_table_chain(table_chain, self.sql_client)]

    def create_load_job(self, table: PreparedTableSchema, file_path: str, load_id: str,
                        restore: bool = False) -> LoadJob:
        job = super().create_load_job(table, file_path, load_id, restore)
        if type(job) is PostgresParquetCopyJob:
            job = _KeptConnectionCopyJob(file_path, run_before=restore)
        elif type(job) is InsertValuesLoadJob:
            job = _InsertOnceJob(file_path)
        return job

    def complete_load(self, load_id: str) -> None:
        """dlt's row in `_dlt_loads` for a load, written once: a package whose end was interrupted
        after this committed ends again on the next load."""
        sql = self.sql_client
        name = sql.make_qualified_table_name(self.schema.loads_table_name)
        column = sql.escape_column_name(self.schema.naming.normalize_identifier("load_id"))
        with sql.execute_query(f"SELECT 1 FROM {name} WHERE {column} = %s", load_id) as cur:  # noqa: S608
            if cur.fetchone() is not None:
                return
        super().complete_load(load_id)


class shared_postgres(dlt.destinations.postgres):  # noqa: N801 (dlt names destinations in lower case)
    """dlt's PostgreSQL destination, for many pipelines that load one dataset (see above)."""

    def __init__(self, *args: Any, destination_name: str = "postgres", **kwargs: Any) -> None:
        # Named as dlt's own, so configuration sections and traces read as before.
        super().__init__(*args, destination_name=destination_name, **kwargs)
        os.environ.setdefault("LOAD__WORKERS", str(LOAD_WORKERS))

    @property
    def client_class(self) -> type[PostgresClient]:
        return _SharedDatasetClient

    def capabilities(self, config: Any = None, naming: Any = None) -> Any:
        """dlt asks for these at every step of every load, and without `config` resolved the
        destination's whole configuration each time (5% of a small tenant's extract) only to hand it
        to `adjust_capabilities`, which for PostgreSQL reads the naming convention alone. An empty
        configuration gives the same capabilities (a test compares them with dlt's own)."""
        return super().capabilities(self.spec() if config is None else config, naming)
