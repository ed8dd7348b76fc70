"""Pacing within Xero's limits, against the sandbox with its limits on: a tenant that needs more
than a minute's calls uses ≥ 95% of its minute and meets no 429; two tenants at once under a
lowered app-wide limit share it through PostgreSQL and meet none either; the daily reserve and
requests Xero refuses end the run at once, with the reason.

The sandbox's clock runs 6 times faster here, so Xero's rolling minute lasts 10 wall seconds; the
client is told so (`rate_window_seconds`), exactly as it is told 60 against Xero.
"""

from __future__ import annotations

import functools
import threading

import pytest
import requests

from orchestration.xero_budget import PostgresAppBudget
from xero_sandbox import LimitConfig, SandboxConfig
from xero_sandbox.pytest_plugin import TimedSession, sandbox_token
from xero_source import ENDPOINTS, DailyLimitExceeded, SourceSettings, XeroClient, XeroRequestRefused
from xero_source.pages import PageSpec, read_page

SPEED = 6.0
WINDOW = 60 / SPEED  # wall seconds of the sandbox's minute


def client_for(sb, tenant_index: int = 0, page_size: int = 10, app_budget=None, **settings) -> XeroClient:
    tenant = sb.tenants[tenant_index].tenant_id
    token = sandbox_token(sb)["access_token"]  # the sandbox's user has connected every tenant
    return XeroClient(tenant, lambda: token, SourceSettings(
        api_url=f"{sb.url}/api.xro/2.0", page_size=page_size, rate_window_seconds=WINDOW, **settings),
        session=TimedSession(), app_budget=app_budget)


def invoice_pages(client: XeroClient, **kw):
    spec = PageSpec("Invoices", client.tenant_id, "InvoiceID", True, ENDPOINTS["invoices"].columns)
    return client.paged("Invoices", functools.partial(read_page, spec=spec), **kw)


def answers_429(sb) -> int:
    return sum(int(n) for e in sb.stats()["endpoints"] for status, n in e["status"].items()
               if str(status) == "429")


def busiest_window(sent: list[float], window: float) -> int:
    return max(sum(1 for t in sent if start <= t < start + window) for start in sent)


def test_a_tenant_needing_more_than_a_minute_of_calls_uses_its_minute_and_meets_no_429(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=7, tenants=1, invoices_per_tenant=700, clock_speed=SPEED))
    client = client_for(sb)
    pages = list(invoice_pages(client, params={"order": "UpdatedDateUTC ASC"}))
    assert sum(p.count for p in pages) == 700
    sent = client.session.sent
    assert len(sent) == 71  # 70 full pages and the empty one that ends them: more than a minute's 60
    assert answers_429(sb) == 0 and client.stats["Invoices"].rate_limited == 0
    assert busiest_window(sent, WINDOW) >= 0.95 * 60  # the minute used, not wasted
    assert client.pacer.waited_seconds > 0  # it waited for the window, as it had to


def test_two_tenants_share_a_lowered_app_limit_through_postgresql(xero_sandbox_factory, database_url):
    sb = xero_sandbox_factory(SandboxConfig(seed=8, tenants=2, invoices_per_tenant=400, clock_speed=SPEED,
                                            limits=LimitConfig(app_per_minute=50)))
    # One budget object (and connection) each, as two worker processes would have.
    budgets = [PostgresAppBudget(database_url, per_minute=50, window_seconds=WINDOW) for _ in range(2)]
    clients = [client_for(sb, i, app_budget=budgets[i]) for i in range(2)]
    loaded = [0, 0]
    errors: list[BaseException] = []

    def extract(i: int) -> None:
        try:
            loaded[i] = sum(p.count for p in invoice_pages(clients[i]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=extract, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for budget in budgets:
        budget.close()
    assert not errors, errors
    assert loaded == [400, 400]
    every_call = sorted(clients[0].session.sent + clients[1].session.sent)
    assert len(every_call) == 82  # more than the app's minute of 50
    assert answers_429(sb) == 0  # no appminute 429: the app limit was never exceeded
    assert busiest_window(every_call, WINDOW) <= 50
    assert sum(b.waited_seconds for b in budgets) > 0  # the shared budget made them wait


def test_the_daily_reserve_is_left_to_the_web_app(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=50,
                                            limits=LimitConfig(per_day=10)))
    client = client_for(sb, day_reserve=6)
    with pytest.raises(DailyLimitExceeded) as err:
        list(invoice_pages(client))
    assert sb.tenants[0].tenant_id in str(err.value) and "reserve" in str(err.value)
    assert len(client.session.sent) == 4  # 10 a day, 6 kept: it stopped before the reserve
    assert answers_429(sb) == 0


def test_a_daily_limit_429_ends_the_run_with_the_reset_time(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=50,
                                            limits=LimitConfig(per_day=3)))
    client = client_for(sb, day_reserve=0)
    client.get("Invoices", {"page": 1, "pageSize": 10}, page=1)  # Xero says 2 calls are left today
    web_app = requests.Session()  # ... which the web app spends meanwhile
    headers = {"Authorization": f"Bearer {client.token_provider()}", "xero-tenant-id": client.tenant_id,
               "Accept": "application/json"}
    for _ in range(2):
        assert web_app.get(f"{sb.url}/api.xro/2.0/Organisation", headers=headers, timeout=10).ok
    with pytest.raises(DailyLimitExceeded) as err:
        client.get("Invoices", {"page": 2, "pageSize": 10}, page=2)
    assert "frees up in" in str(err.value) and "UTC" in str(err.value), str(err.value)
    assert "Invoices page 2" in str(err.value)
    assert len(client.session.sent) == 2  # the 429 is not retried


@pytest.mark.parametrize("status", [401, 403, 404])
def test_requests_xero_refuses_fail_fast_with_the_reason(xero_sandbox_factory, status):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=30))
    client = client_for(sb)
    endpoint = "Invoices"
    if status == 404:
        endpoint = "Invoices/00000000-0000-0000-0000-000000000404"  # no such invoice
    else:  # a 401 is asked again once with a renewed token; refused again, the connection is over
        sb.add_fault(str(status), endpoint="Invoices", times=None)
    with pytest.raises(XeroRequestRefused) as err:
        client.get(endpoint, {"page": 1}, page=1)
    assert err.value.status == status
    assert sb.tenants[0].tenant_id in str(err.value) and f"{endpoint} page 1" in str(err.value)
    assert len(client.session.sent) == (2 if status == 401 else 1)


def test_one_retry_budget_per_run(xero_sandbox_factory):
    sb = xero_sandbox_factory(SandboxConfig(seed=3, tenants=1, invoices_per_tenant=100))
    client = client_for(sb, max_retries_per_run=3, max_retries=6)
    client.sleep = lambda seconds: None
    sb.add_fault("503", endpoint="Invoices", times=None)  # every request fails
    with pytest.raises(Exception, match=r"retry budget \(3 retries\) is spent"):
        list(invoice_pages(client))
    assert len(client.session.sent) == 4  # the first try and the run's 3 retries, not 7 per request
