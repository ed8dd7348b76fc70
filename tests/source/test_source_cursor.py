"""The invoices resource's incremental cursor, loaded by dlt into real PostgreSQL: the
If-Modified-Since overlap, a cursor held back when records change while pages are read, and a
full refresh that re-reads everything."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dlt
import pytest

from orchestration.resources import dlt_credentials
from xero_sandbox import SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import SourceSettings, xero_source

OVERLAP = 300


@pytest.fixture
def sandbox(xero_sandbox_factory):
    return xero_sandbox_factory(SandboxConfig(seed=5, tenants=1, invoices_per_tenant=60))


class Loader:
    """One tenant's invoices loaded by a dlt pipeline of its own; `before_request` runs before
    each call to Xero (the token provider is asked once per request)."""

    def __init__(self, sandbox, database_url: str, pipelines_dir: str):
        self.sandbox = sandbox
        self.tenant_id = sandbox.tenants[0].tenant_id
        self.before_request = lambda call: None
        self.calls = 0
        self.token = ""
        # dlt restores a pipeline's state from its dataset: a dataset of its own per test.
        name = f"cursor_{uuid.uuid4().hex[:8]}"
        self.pipeline = dlt.pipeline(
            pipeline_name=name, pipelines_dir=pipelines_dir, dataset_name=name,
            destination=dlt.destinations.postgres(credentials=dlt_credentials(database_url)))

    def _token(self) -> str:
        self.calls += 1
        self.before_request(self.calls)
        return self.token

    def load(self, full_refresh: bool = False, page_size: int = 1000) -> int:
        """Load once; return how many invoice records were fetched."""
        self.calls = 0
        self.token = sandbox_token(self.sandbox)["access_token"]  # the sandbox clock moves on
        settings = SourceSettings(api_url=f"{self.sandbox.url}/api.xro/2.0", page_size=page_size,
                                  modified_since_overlap_seconds=OVERLAP)
        source = xero_source(self.tenant_id, self._token, settings, resources=("invoices",),
                             full_refresh=full_refresh)
        self.pipeline.run(source)
        return self.pipeline.last_trace.last_normalize_info.row_counts.get("invoices", 0)

    @property
    def cursor(self) -> datetime | None:
        state = self.pipeline.state["sources"]["xero"]["resources"]["invoices"]
        value = state.get("modified_since")
        return datetime.fromisoformat(value) if value else None

    def latest_update(self) -> datetime:
        latest = max(int(r["UpdatedDateUTC"][6:19]) for r in
                     self.sandbox.records(self.tenant_id, "Invoices", include_deleted=True))
        return datetime.fromtimestamp(latest / 1000, UTC)

    def changed_after(self, epoch_seconds: float) -> int:
        return sum(1 for r in self.sandbox.records(self.tenant_id, "Invoices", include_deleted=True)
                   if int(r["UpdatedDateUTC"][6:19]) > epoch_seconds * 1000)

    def edit(self, invoice_id: str, reference: str) -> None:
        self.sandbox.mutate(self.tenant_id, "edit_invoice", invoice_id=invoice_id, reference=reference)

    def editable(self) -> list[str]:
        return [r["InvoiceID"] for r in self.sandbox.truth_records(self.tenant_id, "Invoices")
                if r["Status"] in ("DRAFT", "SUBMITTED", "AUTHORISED")]


@pytest.fixture
def loader(sandbox, database_url, tmp_path):
    return Loader(sandbox, database_url, str(tmp_path / "pipelines"))


def test_cursor_is_the_newest_update_and_rereads_a_short_overlap(loader, sandbox):
    total = len(list(sandbox.records(loader.tenant_id, "Invoices", include_deleted=True)))
    assert loader.load() == total
    cursor = loader.cursor
    assert cursor == loader.latest_update()

    first, second, third = loader.editable()[:3]
    sandbox.advance_clock(3600)
    loader.edit(first, "an hour later")
    sandbox.advance_clock(OVERLAP // 2)
    loader.edit(second, "two and a half minutes after that")
    # The two changes, plus what changed within the overlap before the old cursor (at least the
    # record the cursor came from).
    expected = loader.changed_after(cursor.timestamp() - OVERLAP)
    assert expected >= 3
    assert loader.load() == expected
    assert loader.cursor == loader.latest_update()

    assert loader.load() == 2  # nothing changed: the overlap re-reads both edits, 150 s apart
    sandbox.advance_clock(3600)
    loader.edit(third, "an hour later again")
    assert loader.load() == 3  # the new change, and the overlap behind the old cursor
    assert loader.load() == 1  # the overlap has moved on: only the newest change is re-read


def test_records_changing_while_pages_are_read_hold_the_cursor(loader, sandbox):
    loader.load()
    held = loader.cursor
    moved = loader.editable()[:10]
    sandbox.advance_clock(3600)
    for invoice_id in moved:
        loader.edit(invoice_id, "changed before the sync")

    # While page 2 is being asked for, a record of page 1 changes: it moves to the end of the
    # UpdatedDateUTC order, so it comes again and every later record shifts by one place.
    def change_during_paging(call: int) -> None:
        if call == 2:
            sandbox.advance_clock(1)
            loader.edit(moved[0], "changed during the sync")

    loader.before_request = change_during_paging
    assert loader.load(page_size=5) == 11  # ten changes, one of them read twice
    assert loader.cursor == held, "a shifted read must not advance the cursor"

    loader.before_request = lambda call: None
    # Read again from the old mark: every change (the one that slipped between pages included).
    assert loader.load(page_size=5) == loader.changed_after(held.timestamp() - OVERLAP) >= 10
    with loader.pipeline.sql_client() as client:
        references = dict(client.execute_sql(
            f"SELECT DISTINCT ON (invoice_id) invoice_id, reference FROM {loader.pipeline.dataset_name}"  # noqa: S608
            ".invoices ORDER BY invoice_id, updated_date_utc DESC"))
    assert references[moved[0]] == "changed during the sync"
    assert all(references[i] == "changed before the sync" for i in moved[1:])
    assert loader.cursor == loader.latest_update()


def test_full_refresh_reads_everything_and_resets_the_cursor(loader, sandbox):
    loader.load()
    total = len(list(sandbox.records(loader.tenant_id, "Invoices", include_deleted=True)))
    # A mark in the future (e.g. a clock that jumped) would hide every change from now on.
    state = loader.pipeline.state["sources"]["xero"]["resources"]["invoices"]
    with loader.pipeline.managed_state() as managed:
        managed["sources"]["xero"]["resources"]["invoices"]["modified_since"] = "2099-01-01T00:00:00+00:00"
    assert state is not None
    assert loader.load() == 0
    assert loader.load(full_refresh=True) == total
    assert loader.cursor == loader.latest_update()
