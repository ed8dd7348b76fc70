"""Many tenants' pipelines load one dataset: two first loads at the same moment both succeed.

The moment is made, not hoped for: a transaction of the test's holds dlt's version table, where a
loader first looks whether its schema is stored. With dlt's own PostgreSQL destination both loaders
wait there at once, so both go on to look at the catalogue and create what is missing at the same
time (one then failed on PostgreSQL's catalogue, when their timing met). With `shared_postgres` the
second waits for the first's advisory lock instead, and looks only once the first has committed.
Real dlt pipelines in their own processes, into real PostgreSQL.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
import uuid

import dlt
import psycopg
import pytest
from psycopg import sql

from orchestration.resources import dlt_credentials

LOADER = """
import json, sys
import dlt
from xero_source import shared_postgres
a = json.loads(sys.argv[1])
destination = (shared_postgres if a["shared"] else dlt.destinations.postgres)(credentials=a["credentials"])
pipeline = dlt.pipeline(pipeline_name=a["pipeline"], pipelines_dir=a["pipelines_dir"],
                        dataset_name=a["dataset"], destination=destination)
rows = [{"tenant_id": a["pipeline"], "invoice_id": str(i), "total": i} for i in range(3)]
pipeline.run(dlt.resource(rows, name="invoices", write_disposition="append"))
"""


def _lock_waits(conn: psycopg.Connection) -> list[str]:
    """What the database's sessions wait for: 'relation' (a table) or 'advisory' (an advisory lock)."""
    return sorted(row[0] for row in conn.execute(
        "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"))


@pytest.mark.parametrize("shared", [True, False], ids=["shared_postgres", "dlt_postgres"])
def test_two_first_loads_into_one_dataset_at_the_same_moment(database_url, tmp_path, shared):
    dataset = f"shared_{uuid.uuid4().hex[:8]}"
    credentials = dlt_credentials(database_url)
    # The dataset and dlt's version table exist (an earlier pipeline's load); the invoices table not yet.
    first = dlt.pipeline(pipeline_name=f"{dataset}_first", pipelines_dir=str(tmp_path), dataset_name=dataset,
                         destination=dlt.destinations.postgres(credentials=credentials))
    first.run(dlt.resource([{"id": 1}], name="organisation"))

    def loader(name: str) -> subprocess.Popen:
        args = {"shared": shared, "credentials": credentials, "pipeline": f"{dataset}_{name}",
                "pipelines_dir": str(tmp_path), "dataset": dataset}
        return subprocess.Popen([sys.executable, "-c", LOADER, json.dumps(args)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    with psycopg.connect(database_url) as hold:
        hold.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(dataset, "_dlt_version")))
        loaders = [loader("a"), loader("b")]
        deadline = time.monotonic() + 120
        with psycopg.connect(database_url, autocommit=True) as watch:
            while len(waits := _lock_waits(watch)) < 2:
                assert all(p.poll() is None for p in loaders), [p.communicate()[0][-2000:] for p in loaders]
                assert time.monotonic() < deadline, f"the loaders never both waited: {waits}"
                time.sleep(0.1)
    # One at the version table, the other behind the first's schema lock; or, with dlt's own
    # destination, both at the version table, about to look at the catalogue at the same moment.
    assert waits == (["advisory", "relation"] if shared else ["relation", "relation"])
    # The hold is released: both loaders go on.
    outputs = [p.communicate(timeout=120)[0] for p in loaders]
    if shared:
        failed = [out for p, out in zip(loaders, outputs, strict=True) if p.returncode != 0]
        assert not failed, failed[0][-3000:]
        with psycopg.connect(database_url) as conn:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(dataset, "invoices"))).fetchone()[0]
        assert count == 6


def test_the_schema_lock_is_held_while_dlt_changes_the_schema(database_url, tmp_path, monkeypatch):
    """dlt's first look for a stored schema fails (no version table yet) and dlt then resets its
    connection, which ends that session's advisory locks: the schema lock must still be held when
    the tables are created, and at every later schema change (a new column)."""
    from dlt.destinations.job_client_impl import SqlJobClientBase

    from xero_source import shared_postgres

    dataset = f"locked_{uuid.uuid4().hex[:8]}"
    held_during_ddl = []
    execute_ddl = SqlJobClientBase._execute_schema_update_sql

    def watched(client, *args, **kwargs):
        with psycopg.connect(database_url) as watch:  # another session: is the lock held by anyone?
            held_during_ddl.append(watch.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                "((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)",
                (f"dlt schema of {client.sql_client.dataset_name}",)).fetchone()[0])
        return execute_ddl(client, *args, **kwargs)

    monkeypatch.setattr(SqlJobClientBase, "_execute_schema_update_sql", watched)
    pipeline = dlt.pipeline(pipeline_name=dataset, pipelines_dir=str(tmp_path), dataset_name=dataset,
                            destination=shared_postgres(credentials=dlt_credentials(database_url)))
    pipeline.run(dlt.resource([{"id": 1}], name="invoices"))
    pipeline.run(dlt.resource([{"id": 2, "total": 3}], name="invoices"))  # a new column
    assert held_during_ddl and all(held == 1 for held in held_during_ddl), held_during_ddl


def _arrow_rows(name: str, n: int):
    import pyarrow as pa

    table = pa.table({"tenant_id": [name] * n, "invoice_id": [str(i) for i in range(n)],
                      "total": list(range(n))})
    return dlt.resource(table, name="invoices", write_disposition="append", file_format="parquet")


def test_a_process_copies_load_after_load_through_kept_adbc_connections(database_url, tmp_path, monkeypatch):
    """Each load's Parquet files are copied by ADBC, whose connect reads PostgreSQL's whole type
    catalogue: the connections are kept for the next load, also into tables made after they opened.
    A copy that fails closes its connection rather than handing it on."""
    from dlt.destinations.impl.postgres.postgres import PostgresParquetCopyJob

    from xero_source import shared_postgres

    connects = []
    connect = PostgresParquetCopyJob._connect
    monkeypatch.setattr(PostgresParquetCopyJob, "_connect", lambda job: connects.append(job) or connect(job))
    credentials = dlt_credentials(database_url)

    def load(dataset: str, rows) -> None:
        pipeline = dlt.pipeline(pipeline_name=dataset, pipelines_dir=str(tmp_path), dataset_name=dataset,
                                destination=shared_postgres(credentials=credentials))
        pipeline.run(rows)

    def count(dataset: str) -> int:
        with psycopg.connect(database_url) as conn:
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(dataset, "invoices"))).fetchone()[0]

    datasets = [f"kept_{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for dataset in datasets:  # each a new schema and table, made after the first connection opened
        load(dataset, _arrow_rows(dataset, 5))
        assert count(dataset) == 5
    assert len(connects) == 1, len(connects)  # four loads, one connection

    # A copy that fails: the table's column cannot hold the file's text.
    broken = f"kept_{uuid.uuid4().hex[:8]}"
    load(broken, _arrow_rows(broken, 1))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN invoice_id TYPE integer USING 0").format(
            sql.Identifier(broken, "invoices")))
    import pyarrow as pa

    bad = dlt.resource(pa.table({"tenant_id": ["x"], "invoice_id": ["not a number"], "total": [1]}),
                       name="invoices", write_disposition="append", file_format="parquet")
    with pytest.raises(Exception, match="invoice_id|integer|invalid"):
        load(broken, bad)
    before = len(connects)
    load(datasets[0], _arrow_rows(datasets[0], 2))  # the failed copy's connection was not handed on
    assert count(datasets[0]) == 7
    assert len(connects) == before + 1


def test_dlts_sql_connections_are_kept_and_handed_on_clean(database_url, tmp_path, monkeypatch):
    """dlt opens a SQL connection for each load job and for a load's start and end: kept, they are
    opened by the first load and reused by the next ones, each with its own dataset's search path,
    never with a session lock still held, and never from inside a transaction."""
    import psycopg2

    from xero_source import shared_postgres
    from xero_source.destination import _KEPT_SQL

    _KEPT_SQL.close_all()  # what earlier tests in this process kept
    connects = []
    connect = psycopg2.connect
    monkeypatch.setattr(psycopg2, "connect", lambda *a, **k: connects.append(1) or connect(*a, **k))
    credentials = dlt_credentials(database_url)

    def pipeline(dataset: str) -> dlt.Pipeline:
        return dlt.pipeline(pipeline_name=dataset, pipelines_dir=str(tmp_path), dataset_name=dataset,
                            destination=shared_postgres(credentials=credentials))

    def rows(dataset: str, n: int):  # merged through a staging dataset: copy jobs and merge jobs
        return dlt.resource([{"invoice_id": str(i), "total": i} for i in range(n)], name="invoices",
                            write_disposition="merge", primary_key="invoice_id")

    datasets = [f"kept_sql_{uuid.uuid4().hex[:8]}" for _ in range(4)]
    opened = []
    for dataset in datasets:
        before = len(connects)
        pipeline(dataset).run(rows(dataset, 5))
        opened.append(len(connects) - before)
    assert opened[0] >= 1, opened  # the first load opens what its jobs need at once
    assert sum(opened[1:]) <= 1, opened  # the next three loads: the kept ones (one more at most)

    # A kept connection's next user gets its own dataset's search path.
    with pipeline(datasets[1]).sql_client() as client:
        assert client.execute_sql("SHOW search_path")[0][0] == f'"{datasets[1]}",public'
        with client.execute_query("SELECT count(*) FROM invoices") as cursor:  # unqualified: the path
            assert cursor.fetchone()[0] == 5
        # A session lock left held (a release that never ran) is not handed on with the connection.
        client.execute_sql("SELECT pg_advisory_lock(4242)")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND objid = 4242").fetchone()[0] == 0

    # One left inside a transaction is closed, not handed on.
    before = len(connects)
    with pipeline(datasets[2]).sql_client() as client:
        left_open = client.native_connection
        client.native_connection.autocommit = False
        client.execute_sql("SELECT 1")
    assert left_open.closed
    assert left_open not in _KEPT_SQL
    pipeline(datasets[3]).run(rows(datasets[3], 7))
    with psycopg.connect(database_url) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(datasets[3], "invoices"))).fetchone()[0] == 7
    assert len(connects) - before <= 1


def test_a_merged_table_is_made_with_an_index_on_its_merge_key_that_the_merge_uses(database_url, tmp_path):
    from xero_source import shared_postgres

    dataset = f"merge_key_{uuid.uuid4().hex[:8]}"
    pipeline = dlt.pipeline(pipeline_name=dataset, pipelines_dir=str(tmp_path), dataset_name=dataset,
                            destination=shared_postgres(credentials=dlt_credentials(database_url)))

    def versions(ids: range, version: int):
        return dlt.resource([{"tenant_id": "t1", "invoice_id": str(i), "version": version, "total": i}
                             for i in ids], name="invoices", write_disposition="merge",
                            primary_key=("tenant_id", "invoice_id", "version"))

    pipeline.run(versions(range(20_000), 1))
    with psycopg.connect(database_url, autocommit=True) as conn:
        indexes = dict(conn.execute(
            "SELECT schemaname || '.' || indexname, indexdef FROM pg_indexes "
            "WHERE schemaname LIKE %s AND indexname LIKE '%%record_idx'", (f"{dataset}%",)).fetchall())
        # the final table only, not its staging twin: the merge reads the staging table whole
        assert list(indexes) == [f"{dataset}.invoices__record_idx"]
        assert indexes[f"{dataset}.invoices__record_idx"].endswith("(tenant_id, invoice_id, version)")
        conn.execute("ANALYZE {}".format(sql.Identifier(dataset, "invoices").as_string(conn)))
        # A daily load's few changed rows against the table: looked up by the index, not a scan.
        plan = conn.execute(sql.SQL(
            "EXPLAIN SELECT 1 FROM (VALUES ('t1', '7', 2::bigint)) AS s (tenant_id, invoice_id, version) "
            "JOIN {} AS d USING (tenant_id, invoice_id, version)").format(
                sql.Identifier(dataset, "invoices"))).fetchall()
        assert "invoices__record_idx" in " ".join(row[0] for row in plan), plan
    # A chunk of many new versions: merged by looking each up in the index, not by reading the
    # table whole (a hash join over every tenant's rows, what the planner picks unasked).
    scans_before = _settled_scans(database_url, dataset)
    pipeline.run(versions(range(5_000), 2))
    scans = _settled_scans(database_url, dataset)
    assert scans[0] == scans_before[0], (scans_before, scans)  # no sequential scan of the table
    assert scans[1] >= scans_before[1] + 5_000, (scans_before, scans)  # a lookup per staged row
    with psycopg.connect(database_url) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(dataset, "invoices"))).fetchone()[0] == 25_000
        # Staging rows live from the COPY to the MERGE: not written to the WAL (unlogged); the
        # merged rows are.
        persistence = dict(conn.execute(
            "SELECT n.nspname, c.relpersistence FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'invoices' AND n.nspname LIKE %s", (f"{dataset}%",)).fetchall())
        assert persistence == {dataset: "p", f"{dataset}_staging": "u"}, persistence


def _settled_scans(database_url: str, dataset: str) -> tuple[int, int]:
    """(sequential scans, index scans) of the dataset's invoices table, as PostgreSQL counts them
    once every session has reported: a session reports as it ends, so the kept ones are closed."""
    from xero_source import release_kept_connections

    release_kept_connections()
    counts, deadline = None, time.monotonic() + 15
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            now = conn.execute("SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                               "WHERE schemaname = %s AND relname = 'invoices'", (dataset,)).fetchone()
        if now == counts:
            return now
        counts = now
        time.sleep(0.5)
    return counts


def _comparable(capabilities) -> dict:
    """A destination's capabilities as values: a function made anew for each (a partial) by what it
    calls with what."""
    return {key: (value.func, value.args, value.keywords) if isinstance(value, functools.partial) else value
            for key, value in dict(capabilities).items()}


@pytest.mark.parametrize("naming", [None, "snake_case", "sql_cs_v1"])
def test_shared_postgres_has_dlts_postgres_capabilities_without_resolving_its_configuration(
        database_url, naming):
    from dlt.common.normalizers.naming import sql_cs_v1
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    from xero_source import shared_postgres

    conventions = {None: None, "snake_case": NamingConvention(), "sql_cs_v1": sql_cs_v1.NamingConvention()}
    convention = conventions[naming]
    credentials = dlt_credentials(database_url)
    ours = shared_postgres(credentials=credentials).capabilities(naming=convention)
    dlts = dlt.destinations.postgres(credentials=credentials).capabilities(naming=convention)
    assert _comparable(ours) == _comparable(dlts)
