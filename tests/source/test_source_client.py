"""The Xero client against the sandbox over HTTP: paging, If-Modified-Since, limits, faults."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from xero_sandbox import LimitConfig, SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import DailyLimitExceeded, SourceSettings, XeroApiError, XeroClient
from xero_source.client import parse_body


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


def invoice_calls(sb) -> int:
    tenant = sb.tenants[0].tenant_id
    return sum(e["calls"] for e in sb.stats()["endpoints"]
               if e["tenantId"] == tenant and e["endpoint"] == "Invoices")


def test_pages_until_a_short_page_with_exact_amounts(sandbox):
    client, _, provided = make_client(sandbox, page_size=100)
    pages = list(client.paged("Invoices", "Invoices", params={"order": "UpdatedDateUTC ASC"}))
    assert [len(p) for p in pages] == [100, 100, 30]
    ids = {r["InvoiceID"] for p in pages for r in p}
    assert len(ids) == 230  # every invoice, DELETED ones included, each once
    # Each amount reads back as exactly the decimal the sandbox holds.
    truth = {r["InvoiceID"]: r for r in sandbox.records(sandbox.tenants[0].tenant_id, include_deleted=True)}
    for record in (r for p in pages for r in p):
        for field in ("Total", "SubTotal", "TotalTax", "AmountDue", "AmountPaid"):
            assert Decimal(repr(record[field])) == Decimal(str(truth[record["InvoiceID"]][field]))
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


def test_if_modified_since_returns_only_changes(sandbox):
    client, _, _ = make_client(sandbox)
    tenant = sandbox.tenants[0].tenant_id
    since = datetime.fromtimestamp(sandbox.now_ms() / 1000, tz=UTC)
    sandbox.advance_clock(60)
    edited = next(r for r in sandbox.truth_records(tenant, "Invoices") if r["Status"] == "AUTHORISED")
    sandbox.mutate(tenant, "edit_invoice", invoice_id=edited["InvoiceID"], reference="changed")
    pages = list(client.paged("Invoices", "Invoices", modified_since=since))
    assert [r["InvoiceID"] for p in pages for r in p] == [edited["InvoiceID"]]
    assert pages[0][0]["Reference"] == "changed"


@pytest.mark.parametrize("kind", ["500", "503", "drop", "truncate", "malformed", "429"])
def test_transient_faults_are_retried(sandbox, kind):
    client, sleeps, _ = make_client(sandbox)
    sandbox.add_fault(kind, endpoint="Invoices", page=2, times=1)
    pages = list(client.paged("Invoices", "Invoices"))
    assert sum(len(p) for p in pages) == 230
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
        list(client.paged("Invoices", "Invoices"))
    message = str(err.value)
    assert sandbox.tenants[0].tenant_id in message and "Invoices page 2" in message
    assert len(sleeps) == 2


def test_daily_limit_is_not_retried(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=30,
                                            limits=LimitConfig(per_day=2)))
    client, sleeps, _ = make_client(sb, page_size=10)
    with pytest.raises(DailyLimitExceeded) as err:
        list(client.paged("Invoices", "Invoices"))
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
    pages = list(client.paged("Invoices", "Invoices"))
    assert sum(len(p) for p in pages) == 50
    assert sleeps and all(0 < s <= 60 for s in sleeps)


def test_the_next_page_is_fetched_while_the_caller_handles_this_one(sandbox):
    client, _, _ = make_client(sandbox, page_size=50)
    pages = client.paged("Invoices", "Invoices")
    first = next(pages)
    # While the caller still holds page 1, page 2 is asked for (a bounded wait, no timing).
    deadline = time.monotonic() + 30
    while invoice_calls(sandbox) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert invoice_calls(sandbox) == 2 and len(first) == 50
    assert sum(len(p) for p in pages) == 230 - 50
    assert invoice_calls(sandbox) == 5  # 50+50+50+50+30: nothing asked twice, nothing after the short page


def test_nothing_is_fetched_ahead_past_the_pause(sandbox):
    client, _, _ = make_client(sandbox, page_size=50)
    pages = client.paged("Invoices", "Invoices", pause_at=2)
    assert [len(next(pages)) for _ in range(2)] == [50, 50]
    time.sleep(0.5)  # a prefetch, had there been one, would have been sent by now
    pages.close()  # the caller stops at the pause, as a chunk ends
    assert invoice_calls(sandbox) == 2
