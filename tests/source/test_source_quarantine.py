"""A record that cannot be typed (a date that is no date, an amount that is not a number) goes to
`quarantine` with its payload and the reason, the rest of its page loads, the run counts it, and
the record's next clean version replaces it: loaded by dlt into real PostgreSQL from the sandbox."""

from __future__ import annotations

import uuid

import dlt
import psycopg
import pytest
from psycopg import sql

from orchestration.resources import dlt_credentials
from xero_sandbox import SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import ENDPOINTS, SourceSettings, XeroClient, xero_source
from xero_source.source import record_problems


@pytest.fixture
def sandbox(xero_sandbox_factory):
    return xero_sandbox_factory(SandboxConfig(seed=9, tenants=1, invoices_per_tenant=120))


class Loader:
    def __init__(self, sandbox, database_url: str, pipelines_dir: str):
        self.sandbox, self.database_url = sandbox, database_url
        self.tenant_id = sandbox.tenants[0].tenant_id
        self.dataset = f"quarantine_{uuid.uuid4().hex[:8]}"
        self.pipeline = dlt.pipeline(
            pipeline_name=self.dataset, pipelines_dir=pipelines_dir, dataset_name=self.dataset,
            destination=dlt.destinations.postgres(credentials=dlt_credentials(database_url)))

    def load(self, resources=("invoices", "payments"), full_refresh: bool = False) -> XeroClient:
        token = sandbox_token(self.sandbox)["access_token"]
        settings = SourceSettings(api_url=f"{self.sandbox.url}/api.xro/2.0", page_size=50)
        client = XeroClient(self.tenant_id, lambda: token, settings)
        self.pipeline.run(xero_source(self.tenant_id, client.token_provider, settings, resources=resources,
                                      full_refresh=full_refresh, client=client))
        return client

    def rows(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(self.database_url) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.dataset)))
            return conn.execute(query, params).fetchall()


@pytest.fixture
def loader(sandbox, database_url, tmp_path):
    return Loader(sandbox, database_url, str(tmp_path / "pipelines"))


def test_a_malformed_record_is_quarantined_and_the_rest_of_its_page_loads(loader, sandbox):
    tenant = loader.tenant_id
    sandbox.add_fault("bad_date", endpoint="Invoices", page=1, times=1)
    sandbox.add_fault("bad_amount", endpoint="Payments", page=1, times=1)
    client = loader.load()

    truth = sorted(sandbox.records(tenant, "Invoices", include_deleted=True),
                   key=lambda r: (r["UpdatedDateUTC"], r["InvoiceID"]))
    bad_invoice = truth[0]["InvoiceID"]  # the first record of the first page (oldest first)
    loaded = {r[0] for r in loader.rows("SELECT invoice_id FROM invoices")}
    assert loaded == {r["InvoiceID"] for r in truth} - {bad_invoice}  # the rest of its page loaded
    assert client.stats["Invoices"].quarantined == 1 and client.stats["Payments"].quarantined == 1

    rows = {r[1]: r for r in loader.rows(
        "SELECT endpoint, record_id, reason, payload, tenant_id, quarantined_at FROM quarantine")}
    assert {r[0] for r in rows.values()} == {"Invoices", "Payments"}
    invoice = rows[bad_invoice]
    assert invoice[2] == "Date '/Date(not-a-date)/' is not a date" and invoice[4] == tenant
    assert invoice[3]["InvoiceID"] == bad_invoice and invoice[3]["Date"] == "/Date(not-a-date)/"
    assert invoice[5] is not None
    [payment] = [r for r in rows.values() if r[0] == "Payments"]
    assert payment[2] == "Amount 'twelve' is not a number"
    # Nothing of the bad values leaked into the tables as variant columns.
    columns = {r[0] for r in loader.rows("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_schema = current_schema() AND table_name IN "
                                         "('invoices', 'payments')")}
    assert not [c for c in columns if "__v_" in c]

    # The next clean version replaces it: it loads, and its quarantine row is gone (same load).
    # (The fault was once: the weekly full re-read gets both records clean.)
    client = loader.load(full_refresh=True)
    assert client.stats["Invoices"].quarantined == 0
    assert loader.rows("SELECT endpoint, record_id FROM quarantine") == []
    assert bad_invoice in {r[0] for r in loader.rows("SELECT invoice_id FROM invoices")}
    # A run again converges: nothing new, nothing lost.
    loader.load()
    assert loader.rows("SELECT count(*) FROM quarantine") == [(0,)]


@pytest.mark.parametrize(("change", "problem"), [
    ({"Date": "2024-02-30"}, "Date '2024-02-30' is not a date"),
    ({"Total": "12.50"}, "Total '12.50' is not a number"),
    ({"Total": 10 ** 14}, "Total 100000000000000 is out of range"),
    ({"UpdatedDateUTC": None}, "UpdatedDateUTC None is not a date"),
    ({"InvoiceID": None}, "InvoiceID is missing"),
    ({"HasAttachments": "yes"}, None),  # a field no raw column types is kept as sent
])
def test_what_cannot_be_typed_is_named(change, problem):
    record = {"InvoiceID": "a1b2", "UpdatedDateUTC": "/Date(1700000000000+0000)/", "Date": "2024-02-28",
              "Total": 10, "SubTotal": 8, **change}
    assert record_problems(record, ENDPOINTS["invoices"]) == ([problem] if problem else [])
