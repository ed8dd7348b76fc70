"""The `@dlt.source` and its resources, one per Xero endpoint."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import orjson
import pyarrow as pa
import pyarrow.compute
from dlt.common.configuration.container import Container
from dlt.common.normalizers.utils import generate_dlt_ids
from dlt.common.pipeline import StateInjectableContext
from dlt.common.schema.utils import dlt_id_column, dlt_load_id_column
from dlt.sources import DltResource

from xero_source.client import EndpointStats, TokenProvider, TokenRejected, XeroClient
from xero_source.columns import json_text, page_table, snake
from xero_source.columns import record_key as _record_key
from xero_source.pages import PageSpec, read_page
from xero_source.settings import SourceSettings

log = logging.getLogger(__name__)

DECIMAL = {"data_type": "decimal", "precision": 19, "scale": 6}
# Xero's CurrencyRate carries up to 10 decimal places: keep every one, base-currency figures depend on it.
RATE = {"data_type": "decimal", "precision": 28, "scale": 10}


def _columns(amounts: tuple[str, ...] = (), text: tuple[str, ...] = (), timestamps: tuple[str, ...] = (),
             json: tuple[str, ...] = (), flags: tuple[str, ...] = (),
             integers: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Column hints (normalised names). Money is numeric, never float. Every column the dbt staging
    models read is declared, because Xero leaves empty fields out and dlt only creates a column
    once a record carries it. The nested lists and objects Xero sends are declared JSON too: a page
    bringing an undeclared one carries hints, which dlt checks again for every page."""
    cols: dict[str, dict[str, Any]] = {c: dict(RATE if c == "currency_rate" else DECIMAL) for c in amounts}
    cols.update({c: {"data_type": "text"} for c in text})
    cols.update({c: {"data_type": "timestamp"} for c in timestamps})
    cols.update({c: {"data_type": "json"} for c in json})
    cols.update({c: {"data_type": "bool"} for c in flags})
    cols.update({c: {"data_type": "bigint"} for c in integers})
    return cols


@dataclass(frozen=True)
class Endpoint:
    """How one Xero collection is fetched and keyed."""

    path: str  # e.g. "Invoices"
    id_field: str  # e.g. "InvoiceID"
    paged: bool = True
    collection: str = ""  # the response's list, when not named like the path ("Organisations")
    versioned: bool = True  # records carry UpdatedDateUTC: one raw row per version, If-Modified-Since
    params: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


ENDPOINTS: dict[str, Endpoint] = {
    "invoices": Endpoint(
        "Invoices", "InvoiceID",
        columns=_columns(
            amounts=("sub_total", "total_tax", "total", "total_discount", "amount_due", "amount_paid",
                     "amount_credited", "currency_rate"),
            text=("invoice_number", "type", "status", "reference", "currency_code"),
            timestamps=("date", "due_date", "fully_paid_on_date"),
            json=("contact", "line_items", "payments", "credit_notes", "prepayments", "overpayments"),
        ),
    ),
    "contacts": Endpoint(
        # Archived contacts are how Xero shows a contact's removal: ask for them too.
        "Contacts", "ContactID", params={"includeArchived": "true"},
        columns=_columns(
            text=("name", "contact_status", "email_address", "default_currency", "account_number"),
            flags=("is_customer", "is_supplier"),
            json=("addresses", "phones", "contact_groups", "contact_persons"),
        ),
    ),
    "payments": Endpoint(
        "Payments", "PaymentID",
        columns=_columns(
            amounts=("amount", "bank_amount", "currency_rate"),
            text=("payment_type", "status", "reference"),
            timestamps=("date",),
            json=("invoice", "credit_note", "account"),
            flags=("is_reconciled",),
        ),
    ),
    "credit_notes": Endpoint(
        "CreditNotes", "CreditNoteID",
        columns=_columns(
            amounts=("sub_total", "total_tax", "total", "remaining_credit", "currency_rate"),
            text=("credit_note_number", "type", "status", "reference", "currency_code"),
            timestamps=("date", "fully_paid_on_date"),
            json=("contact", "allocations", "line_items", "payments"),
        ),
    ),
    "accounts": Endpoint(
        "Accounts", "AccountID", paged=False,
        columns=_columns(
            text=("code", "name", "status", "type", "class", "tax_type", "currency_code"),
        ),
    ),
    # The organisation itself (base currency, time zone, financial year end): one record, no
    # UpdatedDateUTC and no If-Modified-Since, so one call per run keeps its latest state.
    "organisation": Endpoint(
        "Organisation", "OrganisationID", paged=False, collection="Organisations", versioned=False,
        columns=_columns(
            text=("name", "legal_name", "base_currency", "country_code", "timezone", "organisation_status",
                  "short_code"),
            integers=("financial_year_end_day", "financial_year_end_month"),
        ),
    ),
}

DEFAULT_RESOURCES: tuple[str, ...] = tuple(ENDPOINTS)


class _JsonAsArrowText(logging.Filter):
    """dlt warns when an Arrow table's types differ from the resource's column hints. Ours differ
    by design: a JSON column travels as Arrow text (Arrow has no JSON type) and is loaded as JSON.
    For our resources that warning, once per resource and load, says nothing."""

    _ours = tuple(f"In resource: {name}, when merging arrow schema with dlt schema" for name in ENDPOINTS)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._ours)


logging.getLogger("dlt").addFilter(_JsonAsArrowText())

# A record that cannot be typed is kept here, as sent, with the reason; the rest of its page loads.
# One row per record (its latest bad version); its next clean version removes the row, in the same
# load that brings that version (`cleared`, dlt's hard delete).
QUARANTINE_TABLE = "quarantine"
QUARANTINE_HINTS = dlt.mark.make_hints(
    table_name=QUARANTINE_TABLE,
    write_disposition={"disposition": "merge", "strategy": "upsert"},
    primary_key=("tenant_id", "endpoint", "record_key"),
    columns={
        "tenant_id": {"data_type": "text", "nullable": False},
        "endpoint": {"data_type": "text", "nullable": False},
        "record_key": {"data_type": "text", "nullable": False},  # the record's id, else a hash of it
        "record_id": {"data_type": "text"},
        "updated_date_utc": {"data_type": "text"},  # as sent: it may be what is wrong
        "reason": {"data_type": "text"},
        "payload": {"data_type": "json"},
        "quarantined_at": {"data_type": "timestamp"},
        "cleared": {"data_type": "bool", "hard_delete": True},
    },
)
def record_problems(record: dict[str, Any], endpoint: Endpoint) -> list[str]:
    """Why `record` cannot be typed as the raw table's columns say, or [] when it can."""
    page = page_table([record], "-", endpoint.id_field, endpoint.versioned, endpoint.columns)
    return page.problems.get(0, [])


def _quarantine_row(record: dict[str, Any], endpoint: Endpoint, tenant_id: str, key: str,
                    problems: list[str]) -> dict[str, Any]:
    record_id = record.get(endpoint.id_field)
    return {"tenant_id": tenant_id, "endpoint": endpoint.path, "record_key": key,
            "record_id": record_id if isinstance(record_id, str) else None,
            "updated_date_utc": str(record.get("UpdatedDateUTC")), "reason": "; ".join(problems),
            "payload": orjson.loads(json_text(record)), "quarantined_at": datetime.now(UTC), "cleared": False}


# dlt checks an item's hints, normalises its schema and writes it as it comes: pages are handed to it
# ten at a time (one Arrow table), so that is done once for ten pages.
ROWS_PER_ITEM = 10_000
FILE_MAX_ROWS = 20_000  # rows in a load file (see _prepare_for_bulk_loads)
ROW_GROUP_ROWS = 2_000  # rows in a load file's Parquet row group: the COPY's batches (ditto)
MALLOC_ARENAS = 2  # the C allocator's arenas in a loading process (_few_malloc_arenas)
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _with_dlt_columns(table: pa.Table) -> pa.Table:
    """`table` with the two columns dlt gives every row: a row id, made here (dlt's way) so that
    dlt's normalise step can take the file the extract wrote as it is instead of writing it again
    to add one, and the load id's place, which dlt's extract fills."""
    rows = table.num_rows
    return (table.append_column(pa.field("_dlt_load_id", pa.string(), nullable=False), pa.repeat("", rows))
            .append_column(pa.field("_dlt_id", pa.string(), nullable=False),
                           pa.array(generate_dlt_ids(rows), pa.string())))


class _PageBatch:
    """Consecutive typed pages, handed to dlt as one table of about `ROWS_PER_ITEM` rows. Pages
    differ in their columns (Xero leaves out a field no record of a page has): a column one page
    lacks is null there. A page whose column has another type than before starts a table of its own."""

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._schema: pa.Schema | None = None  # the tables' columns together
        self._rows = 0

    def add(self, table: pa.Table) -> Iterator[pa.Table]:
        schema = self._with(table.schema)
        if schema is None:
            yield from self.flush()
            schema = table.schema
        self._tables.append(table)
        self._schema = schema
        self._rows += table.num_rows
        if self._rows >= ROWS_PER_ITEM:
            yield from self.flush()

    def _with(self, schema: pa.Schema) -> pa.Schema | None:
        """The batch's columns and `schema`'s together; None when a column's types differ."""
        if self._schema is None:
            return schema
        try:
            return pa.unify_schemas([self._schema, schema])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None

    def flush(self) -> Iterator[pa.Table]:
        if self._tables:
            tables, self._tables, self._schema, self._rows = self._tables, [], None, 0
            yield _with_dlt_columns(pa.concat_tables(tables, promote_options="default"))


def _make_resource(name: str, endpoint: Endpoint, client: XeroClient, settings: SourceSettings,
                   full_refresh: bool) -> DltResource:
    # dlt's own two columns are declared as dlt declares them (the pages carry them: _with_dlt_columns),
    # except that a row id is not a UNIQUE constraint: nothing looks a raw row up by it (a merge goes
    # by the record's key), and its index cost every loaded row an insert into it twice, in staging
    # and in the table (45-55 ms of PostgreSQL's ~0.3 s for 10,000 invoices).
    columns = {**endpoint.columns, "tenant_id": {"data_type": "text", "nullable": False},
               "_dlt_load_id": dlt_load_id_column(), "_dlt_id": {**dlt_id_column(), "unique": False}}
    # A record version is keyed by (tenant, id, UpdatedDateUTC); an unversioned record by (tenant, id).
    key = ("tenant_id", endpoint.id_field, "UpdatedDateUTC") if endpoint.versioned else (
        "tenant_id", endpoint.id_field)

    @dlt.resource(
        name=name,
        write_disposition={"disposition": "merge", "strategy": "upsert"},
        primary_key=key,
        columns=columns,
        # Pages are Arrow tables (columns.py), loaded as Parquet by ADBC's binary COPY: dlt's fastest
        # path to PostgreSQL. (CSV, the other, cannot tell an empty text from a NULL.)
        file_format="parquet",
        # Resources fetch and type their pages in dlt's extract threads, at once: Xero allows 5 calls
        # in flight per tenant (the client keeps to that), and a run costs its slowest endpoint.
        parallelized=True,
    )
    def fetch() -> Iterator[Any]:
        state = dlt.current.resource_state()
        previous = state.get("modified_since")
        overlap = timedelta(seconds=settings.modified_since_overlap_seconds)
        # A full re-read that a chunk boundary or a crash interrupted goes on from its mark; only a
        # full refresh asked for when none is in progress starts from the beginning.
        continuing = bool(state.get("refresh_in_progress"))
        refreshing = continuing or full_refresh
        start_over = refreshing and not continuing
        since = None
        if previous and not start_over and endpoint.versioned:
            since = datetime.fromisoformat(previous) - overlap
        # A full refresh re-reads everything, so its cursor is what it read (a bad mark heals).
        high_water: datetime | None = (datetime.fromisoformat(previous)
                                       if previous and not start_over else None)
        seen: set[int] = set()
        shifted = False
        # Records of this endpoint now in quarantine: their next clean version clears them.
        quarantined: set[str] = set(state.get("quarantined", []))
        stats = client.stats.setdefault(endpoint.path, EndpointStats())
        id_column = snake(endpoint.id_field)
        spec = PageSpec(endpoint.collection or endpoint.path, client.tenant_id, endpoint.id_field,
                        endpoint.versioned, columns)
        if endpoint.paged:
            params = {**endpoint.params, "order": "UpdatedDateUTC ASC"}
            pages = client.paged(endpoint.path, functools.partial(read_page, spec=spec), since, params,
                                 pause_at=settings.pages_per_chunk)
        else:
            pages = iter([client.get(endpoint.path, endpoint.params, since,
                                     parse=functools.partial(read_page, spec=spec))])
        finished = True
        batch = _PageBatch()
        for number, read in enumerate(pages, start=1):
            page = read.typed
            quarantine = []
            for at, problems in page.problems.items():
                record = read.problem_records[at]
                record_key = _record_key(record, endpoint.id_field)
                log.warning("tenant %s, %s record %s quarantined: %s", client.tenant_id, endpoint.path,
                            record_key, "; ".join(problems))
                quarantine.append(_quarantine_row(record, endpoint, client.tenant_id, record_key, problems))
                quarantined.add(record_key)
                stats.quarantined += 1
            if page.table is not None:
                ids = page.table.column(id_column).to_pylist()
                for record_key in quarantined.intersection(ids):
                    quarantine.append({"tenant_id": client.tenant_id, "endpoint": endpoint.path,
                                       "record_key": record_key, "cleared": True})
                    quarantined.discard(record_key)
                keys = {hash(record_id) for record_id in ids}
                if len(keys) < len(ids) or not seen.isdisjoint(keys):
                    # The record changed while we paged, so later pages shifted and one unchanged
                    # record may have slipped between them: keep the old mark, re-read next time.
                    shifted = True
                seen |= keys
                if "updated_date_utc" in page.table.column_names:
                    updated = pyarrow.compute.max(page.table.column("updated_date_utc")).as_py()
                    if updated is not None and (high_water is None or updated > high_water):
                        high_water = updated
                if page.hints:  # a page bringing a column no hint declares goes with its hints, alone
                    yield from batch.flush()
                    yield dlt.mark.with_hints(_with_dlt_columns(page.table),
                                              dlt.mark.make_hints(columns=page.hints))
                else:
                    yield from batch.add(page.table)
            if quarantine:
                yield dlt.mark.with_hints(quarantine, QUARANTINE_HINTS, create_table_variant=True)
            if (number >= settings.pages_per_chunk and read.count == settings.page_size and not shifted
                    and high_water is not None and (since is None or high_water - overlap > since)
                    and (read.page_count is None or read.page_count - number > _tail_pages(settings))):
                # End of a chunk: this load commits its rows with the cursor, so a crash from here on
                # resumes after them; the next load goes on from the cursor (load_tenant). Not when
                # the pages Xero counts after this one are a few: they are read in this chunk, not
                # in one more load of their own.
                client.unfinished.add(name)
                finished = False
                break
        yield from batch.flush()
        if refreshing and not finished:
            state["refresh_in_progress"] = True
        else:
            state.pop("refresh_in_progress", None)
        state["quarantined"] = sorted(quarantined)
        if high_water is not None and not shifted:
            state["modified_since"] = high_water.isoformat()
        elif shifted:
            log.warning("tenant %s %s: records changed during paging; not advancing the cursor",
                        client.tenant_id, endpoint.path)

    return fetch


def _tail_pages(settings: SourceSettings) -> int:
    """The pages left that a chunk reads rather than end (a tenth of a chunk, at least one): a chunk
    re-reads the cursor's overlap, so a tenant of 100,000 invoices was two chunks of 50 pages and a
    third of one page (0.5 s of 8), and a load of its own for the empty page that ends a full one."""
    return max(1, settings.pages_per_chunk // 10)


def _prepare_for_bulk_loads() -> None:
    """What this process needs to load Xero's pages fast and as the raw tables expect."""
    # Every raw row has a load id and a row id, as dlt gives records (the dbt models read
    # `_dlt_load_id`; `_dlt_id` is NOT NULL). The pages carry their row ids (`_with_dlt_columns`):
    # asked to add them, dlt's normalise step would write every file again.
    dlt.config["normalize.parquet_normalizer.add_dlt_load_id"] = True
    dlt.config["normalize.parquet_normalizer.add_dlt_id"] = False
    # Load files go from this process to PostgreSQL once: compressing them only costs CPU. That is
    # dlt's file compression and Parquet's own (snappy by default: 15 ms to write 10,000 invoices
    # and 6 ms to read them again, of a 10,000-invoice tenant's 0.8 s).
    dlt.config["data_writer.disable_compression"] = True
    dlt.config["data_writer.compression"] = "none"
    # A loaded file is deleted once its package has landed; dlt keeps them by default, so a worker's
    # folder (a tmpfs in the image) grew by every file it ever loaded: 0.4 GB for 1M invoices.
    dlt.config["load.delete_completed_jobs"] = True
    # A chunk of 50 pages is written as three files, not one, so that the load copies them into
    # PostgreSQL on its workers at once (LOAD__WORKERS, 3): files of a quarter of a 100-page chunk
    # took 0.4 s less a chunk than one file, in an A/B run.
    dlt.config["data_writer.file_max_items"] = FILE_MAX_ROWS
    # The load copies a file a row group at a time (ADBC's COPY takes one batch per row group), so
    # PostgreSQL parses a group while the next is encoded: 10,000 invoices copied in 74-78 ms in
    # groups of 500 to 2,000 rows, against 119 ms as one group. Smaller groups cost more to write
    # and read (+8 ms at 1,000, +3 ms at 2,000).
    dlt.config["data_writer.row_group_size"] = ROW_GROUP_ROWS
    # dlt's extract polls its worker threads' futures, and sleeps this long when it finds none: at
    # dlt's 10 ms, the ends of a load's two extracts (its pages, then the pipeline's state) slept
    # 30 ms of a 10,000-invoice tenant's 0.8 s. Checked every ms, it costs nothing measurable at
    # 100,000.
    dlt.config["extract.futures_poll_interval"] = 0.001
    _tune_the_collector_for_pages()
    _arrow_memory_from_malloc()
    _few_malloc_arenas()


# Python collects its young objects every 700 new containers by default. A page of 1,000 invoices
# parses into some 20,000 dicts and lists, none of them in a cycle, alive for as long as the page is
# typed: at that rate the collector ran ~4,700 young, ~430 middle and ~40 full collections per
# 100,000 invoices, a quarter of the extract's time. At this threshold it runs when that many more
# containers are alive than before (what a few pages in flight never reach), so garbage cycles are
# still collected, a little later.
YOUNG_COLLECTION_THRESHOLD = 200_000


@functools.cache
def _tune_the_collector_for_pages() -> None:
    """Once per process: what is alive before the first load (modules, definitions) lives as long as
    the process. Taken out of the collector's view, a page's new objects no longer make every
    collection walk it too (parsing a page took twice as long with it in view). Once only, so that
    no later garbage is ever frozen with it. And the young generation's threshold is raised (above)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < YOUNG_COLLECTION_THRESHOLD:  # 0: collection is off in this process; leave it so
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


@functools.cache
def _arrow_memory_from_malloc() -> None:
    """Arrow's tables (typed pages, the load's Parquet reads) take their memory from the C library's
    allocator, as Python's larger objects and ADBC's COPY buffers do, not from a pool of its own
    (mimalloc). Each allocator keeps what it freed for its own reuse, so with two the process held
    the sum of both peaks: 100,000 invoices in 20 chunks of 5 pages, four times over in one process,
    peaked at 491-499 MB against 578 MB. (A million's peak against 100,000's is `_few_malloc_arenas`.)"""
    pa.set_memory_pool(pa.system_memory_pool())


@functools.cache
def _few_malloc_arenas() -> None:
    """The C library's allocator (glibc) gives threads arenas of their own, up to 8 per core, and an
    arena keeps what it freed. A load starts new threads for every chunk (page fetchers, dlt's
    extract and load workers), so over a million invoices the process's memory climbed chunk after
    chunk, 684 to 765 MB, to 1.2 times the peak of 100,000. Two arenas (as MALLOC_ARENA_MAX=2, a
    setting the environment may give instead) keep it flat: 530-630 MB, peak 651 MB against 782."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: nothing to cap
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


@dlt.source(name="xero", max_table_nesting=0)
def xero_source(
    tenant_id: str,
    token_provider: TokenProvider,
    settings: SourceSettings | None = None,
    resources: Sequence[str] = DEFAULT_RESOURCES,
    full_refresh: bool = False,
    token_rejected: TokenRejected | None = None,
    client: XeroClient | None = None,
) -> list[DltResource]:
    """One tenant's Xero records. `token_provider()` returns a valid access token when called;
    `token_rejected(token)`, if given, hears of a token Xero refused so the provider can renew it.
    `client`: the caller's own, to read its per-endpoint traffic (`client.stats`) after the run."""
    settings = settings or SourceSettings()
    _prepare_for_bulk_loads()
    unknown = set(resources) - set(ENDPOINTS)
    if unknown:
        raise ValueError(f"unknown Xero resources {sorted(unknown)}; known: {sorted(ENDPOINTS)}")
    client = client or XeroClient(tenant_id, token_provider, settings, token_rejected=token_rejected)
    return [_make_resource(name, ENDPOINTS[name], client, settings, full_refresh) for name in resources]


def load_tenant(pipeline: dlt.Pipeline, client: XeroClient, *, full_refresh: bool = False,
                resources: Sequence[str] = DEFAULT_RESOURCES) -> dict[str, int]:
    """Load a tenant's resources chunk after chunk until none has more to read; return the rows
    loaded per table. Each chunk (`pages_per_chunk` pages of a resource) is one dlt load that
    commits its rows and its cursor together: a failure or a kill loses at most the chunk being
    read, and the next run resumes from the last one extracted (its load is finished first).

    A chunk is read while the one before loads: loading is PostgreSQL's COPY and MERGE, during
    which this process mostly waits. dlt runs one step at a time on a pipeline object, so the loads
    run on a second one over the same working folder (`_loader_beside`), in a thread; a chunk is
    normalised only once the one before has landed, so each load takes exactly one package."""
    # dlt's own start: the state restored from the dataset if this folder has none, and a package
    # a killed run left extracted or normalised loaded first (before, a run stopped there).
    pipeline.run()
    loader = _loader_beside(pipeline)
    rows: dict[str, int] = {}
    todo = list(resources)
    landing: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"load-{client.tenant_id}") as loads:
        try:
            while todo:
                client.unfinished.clear()
                pipeline.extract(xero_source(client.tenant_id, client.token_provider, client.settings,
                                             resources=todo, full_refresh=full_refresh, client=client))
                waiting, landing = landing, None
                _landed(waiting)
                pipeline.normalize()
                for table, count in pipeline.last_trace.last_normalize_info.row_counts.items():
                    rows[table] = rows.get(table, 0) + count
                landing = loads.submit(loader.load)
                todo = [name for name in resources if name in client.unfinished]
            waiting, landing = landing, None
            _landed(waiting)
        except BaseException:
            # Leaving waits for a load still running: nothing is left half done behind this call.
            if landing is not None and (failed := landing.exception()) is not None:
                log.error("tenant %s: the load of the chunk before failed too: %s", client.tenant_id, failed)
            raise
        finally:
            loads.submit(_forget_this_threads_dlt_contexts)
            pipeline.activate()
    return rows


def _forget_this_threads_dlt_contexts() -> None:
    """Run last on a loading thread. dlt keeps each thread's contexts (configuration traces, the
    active pipeline...) by thread id and never drops an ended thread's: a loading thread for each
    run kept some 1,700 configuration traces and more for the life of the process (a worker's
    memory grew with every tenant it ran)."""
    with Container._LOCK:  # noqa: SLF001 (dlt's own lock over its per-thread contexts)
        Container().thread_contexts.pop(threading.get_ident(), None)


def _landed(landing: Future | None) -> None:
    """Waits for a chunk's load; its failure is raised here."""
    if landing is not None:
        landing.result()


def _loader_beside(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """A pipeline object for `pipeline`'s loads: the same name, working folder, destination and
    dataset. It loads what `pipeline` normalised and writes nothing of the folder's own: not the
    pipeline's state (dlt writes a step's state back when the step ends, and a load ending after
    `pipeline` extracted the next chunk wrote the cursor back to the chunk before, which was then
    read twice), nor its trace (dlt replaces the folder's trace file at each step's end, unlinking
    the old one first, and two steps ending together failed on the second unlink)."""
    loader = dlt.pipeline(pipeline_name=pipeline.pipeline_name, pipelines_dir=pipeline.pipelines_dir,
                          destination=pipeline.destination, dataset_name=pipeline.dataset_name)
    loader.managed_state = functools.partial(_state_read_only, loader)  # what dlt's steps enter
    loader.config.enable_runtime_trace = False
    pipeline.activate()
    return loader


@contextlib.contextmanager
def _state_read_only(pipeline: dlt.Pipeline, *, extract_state: bool = False) -> Iterator[dict]:
    """`Pipeline.managed_state` for a pipeline that only loads: the state as the folder holds it,
    given to the step as dlt gives it, and not written back."""
    state = pipeline.state
    with Container().injectable_context(StateInjectableContext(state=state)):
        yield state
