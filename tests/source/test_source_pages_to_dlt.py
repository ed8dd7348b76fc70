"""How typed pages reach dlt: several pages to an item, each row with dlt's own row id already on it,
so that dlt's normalise step takes the file the extract wrote as it is; loaded into real PostgreSQL
from the sandbox over HTTP. And the process settings that keep parsing a page cheap (the collector)
and a long load's memory flat (Arrow's allocator, the C allocator's arenas)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import dlt
import psycopg
import pyarrow as pa
import pyarrow.parquet
import pytest
from dlt.common.schema.utils import dlt_id_column, dlt_load_id_column
from dlt.normalize.items_normalizers.arrow import ArrowItemsNormalizer

import xero_source.destination as destination
import xero_source.source as source
from orchestration.resources import dlt_credentials
from xero_sandbox import SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import SourceSettings, XeroClient, load_tenant, shared_postgres


@pytest.fixture
def small_files(monkeypatch):
    """Load files of at most 100 rows in row groups of 40, for this test; the process's own settings
    again after it."""
    monkeypatch.setattr(source, "FILE_MAX_ROWS", 100)
    monkeypatch.setattr(source, "ROW_GROUP_ROWS", 40)
    yield
    monkeypatch.undo()
    source._prepare_for_bulk_loads()


def test_pages_go_to_dlt_several_at_a_time_with_row_ids_and_load_as_the_extract_wrote_them(
        xero_sandbox_factory, database_url, tmp_path, monkeypatch, small_files):
    sandbox = xero_sandbox_factory(SandboxConfig(seed=21, tenants=1, invoices_per_tenant=250))
    tenant = sandbox.tenants[0].tenant_id
    monkeypatch.setattr(source, "ROWS_PER_ITEM", 100)  # pages of 40: items of 3 pages, then the rest
    items: list[int] = []
    with_dlt_columns = source._with_dlt_columns
    monkeypatch.setattr(source, "_with_dlt_columns",
                        lambda table: items.append(table.num_rows) or with_dlt_columns(table))
    rewritten: list[str] = []
    write_again = ArrowItemsNormalizer._write_with_dlt_columns
    monkeypatch.setattr(ArrowItemsNormalizer, "_write_with_dlt_columns",
                        lambda self, file, *a: rewritten.append(file) or write_again(self, file, *a))
    copied: list[tuple[str, str]] = []  # (table, compression) of each Parquet file the load copied
    row_groups: list[int] = []  # their row groups' rows: what the COPY takes a batch at a time
    copy = destination._KeptConnectionCopyJob.run

    def copy_and_record(job):
        metadata = pyarrow.parquet.ParquetFile(job._file_path).metadata
        copied.append((job.load_table_name, metadata.row_group(0).column(0).compression))
        row_groups.extend(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        copy(job)
    monkeypatch.setattr(destination._KeptConnectionCopyJob, "run", copy_and_record)

    token = sandbox_token(sandbox)["access_token"]
    client = XeroClient(tenant, lambda: token, SourceSettings(api_url=f"{sandbox.url}/api.xro/2.0",
                                                              page_size=40))
    dataset = f"pages_{uuid.uuid4().hex[:8]}"
    pipeline = dlt.pipeline(pipeline_name=dataset, dataset_name=dataset, pipelines_dir=str(tmp_path),
                            destination=shared_postgres(credentials=dlt_credentials(database_url)))
    rows = load_tenant(pipeline, client, resources=("invoices",))

    truth = {r["InvoiceID"]: r for r in sandbox.records(tenant, "Invoices", include_deleted=True)}
    assert rows["invoices"] == len(truth) == 250
    assert client.stats["Invoices"].calls == 7  # 6 full pages and the last of 10
    assert items == [120, 120, 10]  # three pages to an item, the last page alone
    assert rewritten == []  # dlt's normalise step wrote no file again
    # A file holds at most 100 rows (an item is not split): three files, copied by the load at once,
    # written without compression (they go to PostgreSQL once, from this machine)...
    assert copied == [("invoices", "UNCOMPRESSED")] * 3
    assert sorted(row_groups) == [10] + [40] * 6
    # ... and deleted once loaded: a worker's folder does not keep every file it ever loaded.
    [load_id] = pipeline.list_completed_load_packages()
    assert pipeline.get_load_package_info(load_id).jobs["completed_jobs"] == []
    assert not list(tmp_path.rglob("*.parquet"))
    with psycopg.connect(database_url) as conn:
        loaded = conn.execute(f"SELECT invoice_id, total, reference, _dlt_id, _dlt_load_id "  # noqa: S608
                              f"FROM {dataset}.invoices").fetchall()
        nullable = dict(conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_schema = %s "
            "AND column_name IN ('_dlt_id', '_dlt_load_id')", (dataset,)).fetchall())
        indexes = conn.execute("SELECT schemaname, indexname FROM pg_indexes WHERE schemaname LIKE %s "
                               "AND tablename = 'invoices'", (f"{dataset}%",)).fetchall()
    assert {r[0]: (r[1], r[2]) for r in loaded} == {
        i: (Decimal(str(r["Total"])), r.get("Reference")) for i, r in truth.items()}
    row_ids = [r[3] for r in loaded]
    assert len(set(row_ids)) == 250 and all(len(i) == 14 for i in row_ids)  # dlt's ids: 10 random bytes
    assert {r[4] for r in loaded} == {pipeline.last_trace.last_normalize_info.loads_ids[-1]}
    assert nullable == {"_dlt_id": "NO", "_dlt_load_id": "NO"}
    # dlt's schema knows the two columns as dlt itself declares them, but the row id is not a UNIQUE
    # constraint: the table's one index is the merge key's, and the staging table has none.
    columns = pipeline.default_schema.get_table_columns("invoices")
    assert columns["_dlt_id"] == {**dlt_id_column(), "unique": False}
    assert columns["_dlt_load_id"] == dlt_load_id_column()
    assert indexes == [(dataset, "invoices__record_idx")]


def _page(**columns: list) -> pa.Table:
    return pa.table({name: pa.array(values) for name, values in columns.items()})


def test_pages_of_other_columns_share_an_item_and_a_column_of_another_type_starts_one(monkeypatch):
    monkeypatch.setattr(source, "ROWS_PER_ITEM", 6)
    batch = source._PageBatch()
    items = [*batch.add(_page(a=[1, 2])), *batch.add(_page(a=[3], b=["x"]))]
    assert items == []  # 3 rows: not yet an item
    items += batch.add(_page(a=[4], c=[True]))  # a column the others lack: null in their rows
    items += batch.add(_page(a=[5], b=[7]))  # b of another type: the pages before go first
    items += batch.add(_page(a=[6, 7, 8, 9, 10], b=[1, 2, None, 3, 4]))  # 6 rows: an item
    items += batch.add(_page(a=[11], b=["v"]))
    items += batch.flush()
    assert [t.select(["a", "b"]).to_pylist() for t in items] == [
        [{"a": 1, "b": None}, {"a": 2, "b": None}, {"a": 3, "b": "x"}, {"a": 4, "b": None}],
        [{"a": a, "b": b} for a, b in zip(range(5, 11), [7, 1, 2, None, 3, 4], strict=True)],
        [{"a": 11, "b": "v"}]]
    assert items[0].column("c").to_pylist() == [None, None, None, True]
    for table in items:
        assert table.column_names[-2:] == ["_dlt_load_id", "_dlt_id"]
        assert table.schema.field("_dlt_id").nullable is False
        assert len(set(table.column("_dlt_id").to_pylist())) == table.num_rows
    assert list(batch.flush()) == []  # nothing left


_COLLECTOR = """
import ctypes, ctypes.util, gc, json, re, sys, tempfile, threading
if sys.argv[1] == "off":
    gc.disable(); gc.set_threshold(0)
import pyarrow as pa
from xero_source.source import MALLOC_ARENAS, YOUNG_COLLECTION_THRESHOLD, _prepare_for_bulk_loads
before, pool_before = gc.get_threshold(), pa.default_memory_pool().backend_name
_prepare_for_bulk_loads()

# Eight threads allocating at once (as a load's fetchers and workers do), then glibc's own count of
# its arenas ("heaps"): without a cap it makes one per contending thread, up to 8 per core.
start, kept = threading.Barrier(8), []
def allocate():
    start.wait()
    kept.extend(bytes(100_000) for _ in range(200))
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fdopen.restype = ctypes.c_void_p
with tempfile.TemporaryFile() as report:
    stream = ctypes.c_void_p(libc.fdopen(report.fileno(), b"w"))
    libc.malloc_info(0, stream)
    libc.fflush(stream)
    report.seek(0)
    arenas = len(re.findall(rb'<heap nr="', report.read()))
print(json.dumps([before, gc.get_threshold(), YOUNG_COLLECTION_THRESHOLD, gc.get_freeze_count() > 0,
                  pool_before, pa.default_memory_pool().backend_name, arenas, MALLOC_ARENAS]))
"""


@pytest.mark.parametrize("collector", ["on", "off"])
def test_a_loading_process_collects_parsed_pages_rarely_unless_off_and_allocates_from_few_arenas(
        collector):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _COLLECTOR, collector], capture_output=True, text=True,
                         check=True, env=env)
    before, after, threshold, frozen, pool_before, pool, arenas, cap = json.loads(
        out.stdout.strip().splitlines()[-1])
    assert frozen  # what lives as long as the process is out of the collector's view
    assert pool_before != "system" and pool == "system"  # one allocator: not the sum of two peaks
    assert 1 <= arenas <= cap  # without the cap, 9 on this 2-core machine
    if collector == "on":
        assert before[0] < threshold and after == [threshold, *before[1:]]
    else:
        assert after == before and after[0] == 0
