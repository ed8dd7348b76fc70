"""The Xero client against the sandbox over HTTP: paging, If-Modified-Since, limits, faults."""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

import xero_source.pages as pages_module
from xero_sandbox import LimitConfig, SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import ENDPOINTS, DailyLimitExceeded, SourceSettings, XeroApiError, XeroClient
from xero_source.client import MalformedBody, parse_body
from xero_source.pages import PageSpec, read_page


@pytest.fixture
def sandbox(xero_sandbox_factory):
    return xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=230))


def make_client(sb, page_size=100, **kw) -> tuple[XeroClient, list[float], list[int]]:
    token = sandbox_token(sb)["access_token"]
    sleeps: list[float] = []
    provided: list[int] = []

    def provider() -> str:
        provided.append(1)
        return token

    settings = SourceSettings(api_url=f"{sb.url}/api.xro/2.0", page_size=page_size, **kw)
    client = XeroClient(sb.tenants[0].tenant_id, provider, settings, sleep=sleeps.append)
    return client, sleeps, provided


def invoices(client: XeroClient, **kw):
    """The tenant's invoice pages, read as the source reads them (`pages.Page`), here in this process."""
    spec = PageSpec("Invoices", client.tenant_id, "InvoiceID", True, ENDPOINTS["invoices"].columns)
    return client.paged("Invoices", functools.partial(read_page, spec=spec), **kw)


def rows(pages) -> list[dict]:
    return [row for p in pages for row in p.typed.table.to_pylist()]


def invoice_calls(sb) -> int:
    tenant = sb.tenants[0].tenant_id
    return sum(e["calls"] for e in sb.stats()["endpoints"]
               if e["tenantId"] == tenant and e["endpoint"] == "Invoices")


def test_pages_until_a_short_page_with_exact_amounts(sandbox):
    client, _, provided = make_client(sandbox, page_size=100)
    pages = list(invoices(client, params={"order": "UpdatedDateUTC ASC"}))
    assert [p.count for p in pages] == [100, 100, 30] and [p.page_count for p in pages] == [3, 3, 3]
    ids = {r["invoice_id"] for r in rows(pages)}
    assert len(ids) == 230  # every invoice, DELETED ones included, each once
    # Each amount reads back as exactly the decimal the sandbox holds.
    truth = {r["InvoiceID"]: r for r in sandbox.records(sandbox.tenants[0].tenant_id, include_deleted=True)}
    for row in rows(pages):
        for field, column in (("Total", "total"), ("SubTotal", "sub_total"), ("TotalTax", "total_tax"),
                              ("AmountDue", "amount_due"), ("AmountPaid", "amount_paid")):
            assert row[column] == Decimal(str(truth[row["invoice_id"]][field]))
    assert invoice_calls(sandbox) == 3 and len(provided) == 3  # a token asked for per request


@pytest.mark.parametrize(("body", "parsed"), [
    (b'{"Total": 148062.76, "Rate": 0.1234567891}', {"Total": 148062.76, "Rate": 0.1234567891}),
    # Past a double's 15 significant digits the body is read with Decimals: nothing is rounded.
    (b'{"Total": 12345678901234.567, "N": 1}', {"Total": Decimal("12345678901234.567"), "N": 1}),
    (b'{"Rate": 0.00012345678901234567}', {"Rate": Decimal("0.00012345678901234567")}),
])
def test_bodies_are_parsed_without_rounding(body, parsed):
    got = parse_body(body)
    assert got == parsed and {type(v) for v in got.values()} == {type(v) for v in parsed.values()}


@pytest.mark.parametrize("body", [b'{"Invoices": [{"InvoiceID": "a1", "Total": 1', b"[]",
                                  b"<html>busy</html>"])
def test_a_body_that_is_no_complete_json_object_is_malformed(body):
    spec = PageSpec("Invoices", "t1", "InvoiceID", True, ENDPOINTS["invoices"].columns)
    with pytest.raises(MalformedBody, match="malformed JSON"):  # the client asks for it again
        read_page(body, spec)


def test_if_modified_since_returns_only_changes(sandbox):
    client, _, _ = make_client(sandbox)
    tenant = sandbox.tenants[0].tenant_id
    since = datetime.fromtimestamp(sandbox.now_ms() / 1000, tz=UTC)
    sandbox.advance_clock(60)
    edited = next(r for r in sandbox.truth_records(tenant, "Invoices") if r["Status"] == "AUTHORISED")
    sandbox.mutate(tenant, "edit_invoice", invoice_id=edited["InvoiceID"], reference="changed")
    [row] = rows(invoices(client, modified_since=since))
    assert row["invoice_id"] == edited["InvoiceID"] and row["reference"] == "changed"


@pytest.mark.parametrize("kind", ["500", "503", "drop", "truncate", "malformed", "429"])
def test_transient_faults_are_retried(sandbox, kind):
    client, sleeps, _ = make_client(sandbox)
    sandbox.add_fault(kind, endpoint="Invoices", page=2, times=1)
    pages = list(invoices(client))
    assert sum(p.count for p in pages) == 230
    assert len(sleeps) == 1  # waited once, then page 2 came through
    if kind == "429":
        assert sleeps[0] >= 1  # honoured Retry-After


def test_an_expired_token_is_reported_and_asked_for_again(sandbox):
    client, _, provided = make_client(sandbox)
    rejected: list[str] = []
    client.token_rejected = rejected.append
    sandbox.add_fault("401", endpoint="Invoices", times=1)
    body = client.get("Invoices", {"page": 1, "pageSize": 10})
    assert len(body["Invoices"]) == 10
    assert len(provided) == 2 and len(rejected) == 1


def test_persistent_errors_name_tenant_endpoint_and_page(sandbox):
    client, sleeps, _ = make_client(sandbox, max_retries=2)
    sandbox.add_fault("503", endpoint="Invoices", page=2, times=None)
    with pytest.raises(XeroApiError) as err:
        list(invoices(client))
    message = str(err.value)
    assert sandbox.tenants[0].tenant_id in message and "Invoices page 2" in message
    assert len(sleeps) == 2


def test_daily_limit_is_not_retried(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=30,
                                            limits=LimitConfig(per_day=2)))
    client, sleeps, _ = make_client(sb, page_size=10)
    with pytest.raises(DailyLimitExceeded) as err:
        list(invoices(client))
    assert "daily" in str(err.value) and sb.tenants[0].tenant_id in str(err.value)
    assert sleeps == []


def test_minute_limit_waits_as_told(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=50,
                                            limits=LimitConfig(per_minute=2)))
    client, sleeps, _ = make_client(sb, page_size=10)

    def sleep_on_sandbox_clock(seconds: float) -> None:
        sleeps.append(seconds)
        sb.advance_clock(seconds)  # the sandbox's minute passes without the test waiting

    client.sleep = sleep_on_sandbox_clock
    pages = list(invoices(client))
    assert sum(p.count for p in pages) == 50
    assert sleeps and all(0 < s <= 60 for s in sleeps)


def wait_for_calls(sb, calls: int) -> None:
    """Until the sandbox has answered `calls` invoice calls (a bounded wait, no timing)."""
    deadline = time.monotonic() + 30
    while invoice_calls(sb) < calls and time.monotonic() < deadline:
        time.sleep(0.01)


def test_pages_xero_counted_are_fetched_ahead_while_the_caller_handles_this_one(sandbox):
    client, _, _ = make_client(sandbox, page_size=50)  # 5 pages: Xero's pagination says so
    pages = invoices(client)
    first = next(pages)
    # While the caller still holds page 1, pages 2 to 4 are asked for: 3 ahead.
    wait_for_calls(sandbox, 4)
    assert invoice_calls(sandbox) == 1 + client.settings.pages_ahead == 4 and first.count == 50
    assert [p.count for p in pages] == [50, 50, 50, 30]
    assert invoice_calls(sandbox) == 5  # nothing asked twice, nothing after the short page


def test_pages_fetched_at_once_are_read_one_at_a_time(sandbox, monkeypatch):
    """Reading a page holds the GIL throughout: pages arriving together on the fetch threads are
    read one after another (pages.read_page), not interleaved."""
    client, _, _ = make_client(sandbox, page_size=25)  # 10 pages, fetched 3 ahead
    reading, most, threads = 0, 0, set()
    type_page = pages_module.page_table

    def watched(*args, **kwargs):
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        threads.add(threading.get_ident())
        try:
            time.sleep(0.02)  # long enough for another fetch thread's page to arrive meanwhile
            return type_page(*args, **kwargs)
        finally:
            reading -= 1

    monkeypatch.setattr(pages_module, "page_table", watched)
    assert [p.count for p in invoices(client)] == [25] * 9 + [5]
    assert len(threads) > 1  # pages were fetched, and read, on several threads
    assert most == 1


def test_without_xeros_page_count_the_next_page_is_fetched_once_this_one_is_full(sandbox):
    client, _, _ = make_client(sandbox, page_size=50)
    spec = PageSpec("Invoices", client.tenant_id, "InvoiceID", True, ENDPOINTS["invoices"].columns)

    def read_without_pagination(body: bytes):
        page = read_page(body, spec)
        page.page_count = None
        return page

    pages = client.paged("Invoices", read_without_pagination)
    first = next(pages)
    wait_for_calls(sandbox, 2)
    time.sleep(0.3)  # a page further ahead, had it been asked for, would have been by now
    assert invoice_calls(sandbox) == 2 and first.count == 50
    assert [p.count for p in pages] == [50, 50, 50, 30] and invoice_calls(sandbox) == 5


def test_nothing_is_fetched_ahead_past_the_pause(sandbox):
    client, _, _ = make_client(sandbox, page_size=50)
    pages = invoices(client, pause_at=2)
    assert [next(pages).count for _ in range(2)] == [50, 50]
    time.sleep(0.5)  # a prefetch, had there been one, would have been sent by now
    pages.close()  # the caller stops at the pause, as a chunk ends
    assert invoice_calls(sandbox) == 2
