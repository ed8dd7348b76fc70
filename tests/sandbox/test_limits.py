"""Rate limits: each one hit over HTTP, exact status and headers, recovery as the sandbox clock moves."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import requests

from xero_sandbox import LimitConfig, SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token

from .conftest import asgi_get

LIMIT_HEADERS = ("X-DayLimit-Remaining", "X-MinLimit-Remaining", "X-AppMinLimit-Remaining")


class Client:
    def __init__(self, sb) -> None:
        self.sb = sb
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {sandbox_token(sb)['access_token']}"

    def get(self, tenant: int = 0, path: str = "Organisation") -> requests.Response:
        return self.s.get(
            f"{self.sb.api_url}/{path}",
            timeout=30,
            headers={"xero-tenant-id": self.sb.tenants[tenant].tenant_id, "Accept": "application/json"},
        )


def test_minute_limit_60_then_429_and_recovery(xero_sandbox_server) -> None:
    c = Client(xero_sandbox_server)
    for n in range(60):
        r = c.get()
        assert r.status_code == 200
        assert r.headers["X-MinLimit-Remaining"] == str(59 - n)
        assert r.headers["X-DayLimit-Remaining"] == str(4999 - n)
        assert r.headers["X-AppMinLimit-Remaining"] == str(9999 - n)
    r = c.get()
    assert r.status_code == 429
    assert r.headers["X-Rate-Limit-Problem"] == "minute"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-MinLimit-Remaining"] == "0"
    assert r.headers["X-DayLimit-Remaining"] == "4940"  # a refused call costs nothing
    assert c.get(tenant=1).status_code == 200  # limits are per tenant
    xero_sandbox_server.advance_clock(60)
    r = c.get()
    assert r.status_code == 200 and r.headers["X-MinLimit-Remaining"] == "59"


def test_starter_tier_day_limit_1000(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(
        tenants=1,
        invoices_per_tenant=5,
        tier="STARTER",
        limits=LimitConfig(per_minute=None, per_day=1000, concurrent=None),
    )
    c = Client(sb)
    last = None
    for _ in range(1000):
        last = c.get()
        assert last.status_code == 200
    assert last is not None and last.headers["X-DayLimit-Remaining"] == "0"
    assert "X-MinLimit-Remaining" not in last.headers  # that limit is switched off
    r = c.get()
    assert r.status_code == 429 and r.headers["X-Rate-Limit-Problem"] == "day"
    assert 86000 <= int(r.headers["Retry-After"]) <= 86400
    sb.advance_clock(1500)
    assert c.get().status_code == 429  # a daily 429 is not worth retrying today
    sb.advance_clock(86400 - 1500)
    r = Client(sb).get()  # (a new access token: the old one expired meanwhile)
    assert r.status_code == 200 and r.headers["X-DayLimit-Remaining"] == "999"


def test_default_day_limit_5000_then_a_day_429(xero_sandbox_factory) -> None:
    """Past Xero's default 5,000 calls a day (every limit at its default): 4,999 calls go through the ASGI app
    in-process, 60 a sandbox minute, then the 5,000th and 5,001st over HTTP."""
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=1, access_token_lifetime=86400)
    c = Client(sb)
    headers = {**c.s.headers, "xero-tenant-id": sb.tenants[0].tenant_id, "Accept": "application/json"}

    async def calls() -> dict[str, str]:
        got: dict[str, str] = {}
        for n in range(4999):
            if n and n % 60 == 0:
                sb.advance_clock(60)  # a new minute: the minute limit never bites
            status, got, _ = await asgi_get(sb, "/api.xro/2.0/Organisation", headers)
            assert status == 200, (n, got)
        return got

    # Each sandbox minute's 60 calls are made at one sandbox instant: with the clock at its own pace,
    # they spread over the wall time they took (more than the second Retry-After is rounded up to,
    # on a busy machine), so fewer than 60 had left the day's window when the test looks below.
    sb.set_clock_speed(1e-6)
    last = asyncio.run(calls())
    sb.set_clock_speed(1.0)
    assert last["x-daylimit-remaining"] == "1" and last["x-minlimit-remaining"] == str(60 - 4999 % 60)
    sb.advance_clock(60)
    r = c.get()
    assert r.status_code == 200 and r.headers["X-DayLimit-Remaining"] == "0"
    r = c.get()
    assert r.status_code == 429 and r.headers["X-Rate-Limit-Problem"] == "day"
    assert r.json()["Detail"] == "Rate limit exceeded: day"
    assert r.headers["X-DayLimit-Remaining"] == "0"
    assert r.headers["X-MinLimit-Remaining"] == "59" and r.headers["X-AppMinLimit-Remaining"] == "9999"
    # The first call leaves the rolling 24 hours 84 sandbox minutes (plus some wall seconds) after it.
    assert 86400 - 84 * 60 - 30 <= int(r.headers["Retry-After"]) <= 86400 - 84 * 60
    sb.advance_clock(int(r.headers["Retry-After"]))
    r = Client(sb).get()  # (a new access token: the old one has expired by now)
    # the first sandbox minute's 60 calls have left the window; this call took one of their places
    assert r.status_code == 200 and r.headers["X-DayLimit-Remaining"] == "59"


def test_app_minute_limit_across_tenants(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=2, invoices_per_tenant=5, limits=LimitConfig(app_per_minute=10))
    c = Client(sb)
    for n in range(10):
        r = c.get(tenant=n % 2)
        assert r.status_code == 200 and r.headers["X-AppMinLimit-Remaining"] == str(9 - n)
    for tenant in (0, 1):
        r = c.get(tenant=tenant)
        assert r.status_code == 429 and r.headers["X-Rate-Limit-Problem"] == "appminute"
        assert r.headers["X-AppMinLimit-Remaining"] == "0"
    sb.advance_clock(61)
    assert c.get().status_code == 200


def test_parallel_clients_beyond_5_in_flight_get_concurrent_429s(xero_sandbox_factory) -> None:
    """20 threads ask one tenant for a 1000-invoice page at once, with no latency injected. The sandbox holds
    each admitted call once its answer is ready, so exactly 5 are in flight whatever the timing: the other 15
    must be refused (which needs calls to be handled concurrently: a server that produced answers on its
    event loop would block on the first held call and answer nothing)."""
    sb = xero_sandbox_factory(tenants=2, invoices_per_tenant=1000)
    token = sandbox_token(sb)["access_token"]
    tid = sb.tenants[0].tenant_id
    start = threading.Barrier(20)

    def call() -> requests.Response:
        start.wait(timeout=30)
        return requests.get(
            f"{sb.api_url}/Invoices",
            params={"page": 1, "pageSize": 1000},
            headers={"Authorization": f"Bearer {token}", "xero-tenant-id": tid, "Accept": "application/json"},
            timeout=60,
        )

    with ThreadPoolExecutor(20) as pool:
        with sb.hold_calls(tid):
            calls = [pool.submit(call) for _ in range(20)]
            refused = []
            for f in as_completed(calls, timeout=60):
                refused.append(f.result())
                if len(refused) == 15:
                    break
            assert sb.stats()["tenants"][tid]["limitsRemaining"]["concurrent"] == 0
            other = Client(sb).get(tenant=1)  # another tenant is unaffected
        answered = [f.result(timeout=60) for f in calls if f.result(timeout=60) not in refused]
    assert other.status_code == 200
    for r in refused:
        assert r.status_code == 429, r.text
        assert r.headers["X-Rate-Limit-Problem"] == "concurrent" and r.headers["Retry-After"] == "1"
        assert r.json()["Status"] == 429
        for header in LIMIT_HEADERS:
            assert header in r.headers
    assert [r.status_code for r in answered] == [200] * 5
    assert all(len(r.json()["Invoices"]) == 1000 for r in answered)
    # refused calls cost nothing: the five answered ones are all the minute window holds
    assert answered[0].headers["X-MinLimit-Remaining"] in {str(60 - n) for n in range(1, 6)}
    assert sb.stats()["tenants"][tid]["limitsRemaining"] == {
        "day": 4995, "minute": 55, "app_minute": 9994, "concurrent": 5
    }


def test_the_slot_is_held_until_the_answer_is_sent(xero_sandbox_server) -> None:
    """A call stays in flight while its body is being sent: a slow reader keeps its slot."""
    sb = xero_sandbox_server
    tid = sb.tenants[0].tenant_id
    headers = {
        "Authorization": f"Bearer {sandbox_token(sb)['access_token']}",
        "xero-tenant-id": tid,
        "Accept": "application/json",
    }

    def in_flight() -> int:
        return 5 - sb.sandbox.limiter.remaining(tid, sb.config.client_id)["concurrent"]

    async def scenario() -> list[int]:
        sending, reader_ready = asyncio.Event(), asyncio.Event()

        async def slow_reader() -> None:
            sending.set()
            await reader_ready.wait()

        slow = [asyncio.create_task(asgi_get(sb, "/api.xro/2.0/Invoices", headers, on_body=slow_reader))]
        await sending.wait()
        seen = [in_flight()]
        more = [asyncio.create_task(asgi_get(sb, "/api.xro/2.0/Organisation", headers)) for _ in range(4)]
        await asyncio.gather(*more)  # fast readers come and go while the slow one is still being sent
        seen.append(in_flight())
        reader_ready.set()
        status, _, body = (await asyncio.gather(*slow))[0]
        assert status == 200 and json.loads(body)["Invoices"]
        return [*seen, in_flight()]

    assert asyncio.run(scenario()) == [1, 1, 0]


def test_accelerated_clock_makes_a_minute_short(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(
        tenants=1, invoices_per_tenant=5, clock_speed=120, limits=LimitConfig(per_minute=3)
    )
    c = Client(sb)
    for _ in range(3):
        assert c.get().status_code == 200
    r = c.get()
    assert r.status_code == 429 and r.headers["X-Rate-Limit-Problem"] == "minute"
    # Retry-After is in wall-clock seconds at this clock speed: 60 sandbox s / 120 -> 1 s.
    assert r.headers["Retry-After"] == "1"
    for _ in range(50):
        time.sleep(int(r.headers["Retry-After"]))
        r = c.get()
        if r.status_code == 200:
            break
    assert r.status_code == 200


class StoppedWall:
    """Stands in for the sandbox clock's wall clock, so sandbox time moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_retry_after_in_sandbox_or_wall_seconds_exactly(xero_sandbox_factory, monkeypatch) -> None:
    wall = StoppedWall()
    monkeypatch.setattr("xero_sandbox.clock.time", wall)
    sb = xero_sandbox_factory(
        tenants=1,
        invoices_per_tenant=5,
        clock_speed=10,
        limits=LimitConfig(per_minute=1, retry_after_wall_clock=False),
    )
    c = Client(sb)
    assert c.get().status_code == 200
    wall.now += 1.5  # 15 sandbox seconds at 10x
    r = c.get()
    # The minute's only call frees its place 60 - 15 = 45 sandbox seconds from now...
    assert r.status_code == 429 and r.headers["Retry-After"] == "45"
    # ...which is 4.5 wall seconds at this speed: Retry-After is whole seconds, rounded up (the default).
    sb.sandbox.limiter.limits.retry_after_wall_clock = True
    assert c.get().headers["Retry-After"] == "5"
    wall.now += 4.5
    assert c.get().status_code == 200


def test_limits_switched_off(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(config=SandboxConfig(tenants=1, invoices_per_tenant=5, rate_limits=False))
    c = Client(sb)
    for _ in range(80):
        r = c.get()
        assert r.status_code == 200
    assert not any(h.startswith("X-") and "Limit" in h for h in r.headers)


def test_429_answers_of_every_endpoint_carry_headers(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=5, limits=LimitConfig(per_minute=1))
    c = Client(sb)
    assert c.get(path="Invoices").status_code == 200
    for path in ("Invoices", "Contacts", "Payments", "CreditNotes", "Accounts", "Organisation"):
        r = c.get(path=path)
        assert r.status_code == 429
        for header in (
            "Retry-After",
            "X-Rate-Limit-Problem",
            "X-MinLimit-Remaining",
            "X-DayLimit-Remaining",
            "X-AppMinLimit-Remaining",
        ):
            assert header in r.headers
    stats = sb.stats()["tenants"][sb.tenants[0].tenant_id]
    assert stats["limitsRemaining"]["minute"] == 0
    assert stats["calls"] == 7


def test_401_and_403_answers_carry_the_limit_headers(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=2, invoices_per_tenant=5)
    c = Client(sb)
    assert c.get().status_code == 200
    tid = sb.tenants[0].tenant_id
    answers = {
        "no token": requests.get(f"{sb.api_url}/Invoices", headers={"xero-tenant-id": tid}, timeout=10),
        "bad token": requests.get(
            f"{sb.api_url}/Invoices", headers={"xero-tenant-id": tid, "Authorization": "Bearer x"}, timeout=10
        ),
        "no tenant": c.s.get(f"{sb.api_url}/Invoices", timeout=10),
        "unknown tenant": c.s.get(
            f"{sb.api_url}/Invoices",
            headers={"xero-tenant-id": "00000000-0000-4000-8000-000000000000"},
            timeout=10,
        ),
    }
    narrow = requests.Session()
    narrow_token = sandbox_token(sb, scope="accounting.contacts.read")["access_token"]
    narrow.headers["Authorization"] = f"Bearer {narrow_token}"
    narrow.headers["xero-tenant-id"] = tid
    answers["missing scope"] = narrow.get(f"{sb.api_url}/Invoices", timeout=10)
    sb.admin("POST", "tokens/expire")
    answers["expired token"] = c.get()
    for what, r in answers.items():
        assert r.status_code in (401, 403), what
        for header in LIMIT_HEADERS:
            assert header in r.headers, (what, header)
    # they report the tenant's counts (one call made) without consuming any
    assert answers["expired token"].headers["X-MinLimit-Remaining"] == "59"
    assert answers["expired token"].headers["X-DayLimit-Remaining"] == "4999"
    assert sb.stats()["tenants"][tid]["limitsRemaining"]["minute"] == 59


def test_an_injected_429_is_consistent_with_its_headers(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=5)
    c = Client(sb)
    assert c.get().headers["X-MinLimit-Remaining"] == "59"
    sb.add_fault("429", endpoint="Organisation", times=1)
    r = c.get()
    assert r.status_code == 429 and r.headers["X-Rate-Limit-Problem"] == "minute"
    assert r.headers["X-MinLimit-Remaining"] == "0" and int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-DayLimit-Remaining"] == "4999"  # a 429 consumes no quota
    r = c.get()
    assert r.status_code == 200 and r.headers["X-MinLimit-Remaining"] == "58"
