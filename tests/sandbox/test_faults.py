"""Faults: scripted and random, each kind seen by a real HTTP client."""

from __future__ import annotations

import json
import time

import pytest
import requests

from xero_sandbox import FaultConfig, SandboxConfig, SandboxServer
from xero_sandbox.pytest_plugin import sandbox_token


def session(sb: SandboxServer, tenant: int = 0) -> requests.Session:
    s = requests.Session()
    s.headers.update(
        {
            "Authorization": f"Bearer {sandbox_token(sb)['access_token']}",
            "xero-tenant-id": sb.tenants[tenant].tenant_id,
            "Accept": "application/json",
        }
    )
    return s


def page(s: requests.Session, sb: SandboxServer, n: int) -> requests.Response:
    return s.get(f"{sb.api_url}/Invoices", params={"page": n, "pageSize": 10}, timeout=30)


def test_page_3_of_invoices_fails_once(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.add_fault("500", endpoint="Invoices", page=3, times=1)
    assert page(s, sb, 1).status_code == 200
    assert page(s, sb, 2).status_code == 200
    r = page(s, sb, 3)
    assert r.status_code == 500 and r.json()["Title"] == "An error occurred"
    assert page(s, sb, 3).status_code == 200  # the retry works
    assert s.get(f"{sb.api_url}/Contacts", params={"page": 3}, timeout=30).status_code == 200


def test_503_is_plain_text_and_rules_can_target_a_tenant(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    sb.add_fault("503", tenant_id=sb.tenants[1].tenant_id, times=2)
    assert page(session(sb, 0), sb, 1).status_code == 200
    s1 = session(sb, 1)
    for _ in range(2):
        r = page(s1, sb, 1)
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/plain")
        assert "offline" in r.text
    assert page(s1, sb, 1).status_code == 200


def test_skip_lets_calls_through_first(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.add_fault("501", endpoint="Invoices", skip=2, times=1)
    assert [page(s, sb, 1).status_code for _ in range(4)] == [200, 200, 501, 200]


def test_dropped_connection(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.add_fault("drop", endpoint="Invoices")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        page(s, sb, 1).json()
    assert page(s, sb, 1).status_code == 200


def test_truncated_and_malformed_bodies(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.add_fault("truncate", endpoint="Invoices")
    r = page(s, sb, 1)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    sb.add_fault("malformed", endpoint="Invoices")
    r = page(s, sb, 1)
    assert r.status_code == 200 and r.text.startswith("<html>")
    assert page(s, sb, 1).json()["Invoices"]


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        (
            "429",
            429,
            lambda r: r.headers["X-Rate-Limit-Problem"] == "minute" and r.headers["Retry-After"] == "1",
        ),
        ("401", 401, lambda r: r.json()["Detail"].startswith("TokenExpired")),
        ("403", 403, lambda r: r.json()["Detail"] == "AuthenticationUnsuccessful"),
    ],
)
def test_auth_and_limit_faults(xero_sandbox_server, kind, status, check) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.add_fault(kind, endpoint="Payments")
    r = s.get(f"{sb.api_url}/Payments", timeout=30)
    assert r.status_code == status and check(r)
    assert s.get(f"{sb.api_url}/Payments", timeout=30).status_code == 200


def test_organisation_offline(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    s = session(sb)
    sb.set_offline(sb.tenants[0].tenant_id)
    for path in ("Invoices", "Organisation", "Accounts"):
        r = s.get(f"{sb.api_url}/{path}", timeout=30)
        assert r.status_code == 503 and "offline" in r.text
        assert "X-MinLimit-Remaining" in r.headers
    sb.set_offline(sb.tenants[0].tenant_id, False)
    assert s.get(f"{sb.api_url}/Organisation", timeout=30).status_code == 200


def test_random_faults_are_seeded_and_repeatable(xero_sandbox_factory) -> None:
    cfg = dict(
        tenants=1,
        invoices_per_tenant=20,
        rate_limits=False,
        faults=FaultConfig(error_rate=0.3, truncate_rate=0.1, seed=5),
    )
    runs = []
    for _ in range(2):
        sb = xero_sandbox_factory(config=SandboxConfig(**cfg))
        s = session(sb)
        runs.append([(r.status_code, r.text.endswith("}")) for r in (page(s, sb, 1) for _ in range(40))])
    assert runs[0] == runs[1]
    statuses = {st for st, _ in runs[0]}
    assert 200 in statuses and statuses & {500, 503}
    assert (200, False) in runs[0]  # some truncated bodies


def test_fault_admin_api(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    base = f"{sb.url}/__sandbox/faults"
    rule = requests.post(base, json={"kind": "500", "endpoint": "Invoices", "page": 2}, timeout=10).json()
    assert rule["id"] >= 1 and rule["page"] == 2
    assert requests.post(base, json={"kind": "explode"}, timeout=10).status_code == 400
    assert len(requests.get(base, timeout=10).json()["rules"]) == 1
    s = session(sb)
    assert page(s, sb, 2).status_code == 500
    assert requests.get(base, timeout=10).json()["rules"][0]["fired"] == 1
    requests.delete(base, timeout=10)
    assert requests.get(base, timeout=10).json()["rules"] == []
    r = requests.post(f"{base}/rates", json={"error_rate": 1.0, "error_statuses": [503]}, timeout=10)
    assert r.status_code == 200
    assert page(s, sb, 1).status_code == 503
    requests.post(f"{base}/rates", json={}, timeout=10)
    assert page(s, sb, 1).status_code == 200


@pytest.mark.parametrize(("accept", "end"), [("application/json", "}"), ("text/xml", "</Response>")])
def test_body_faults_fire_on_json_xml_and_error_answers_alike(xero_sandbox_server, accept, end) -> None:
    """A drop, truncate or malformed fault that is picked always fires, whatever the answer: so the count of
    faults fired is what clients saw."""
    sb = xero_sandbox_server
    s = session(sb)
    s.headers["Accept"] = accept
    whole = page(s, sb, 1)
    assert whole.status_code == 200 and whole.text.endswith(end)
    sb.add_fault("truncate", endpoint="Invoices")
    cut = page(s, sb, 1)
    assert cut.status_code == 200 and not cut.text.endswith(end)
    assert cut.headers["content-type"] == whole.headers["content-type"]
    assert 0 < len(cut.content) <= len(whole.content) // 2 + 1
    sb.add_fault("malformed", endpoint="Invoices")
    html = page(s, sb, 1)
    assert html.status_code == 200 and html.text.startswith("<html>")
    assert html.headers["content-type"] == whole.headers["content-type"]
    sb.add_fault("drop", endpoint="Invoices")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        page(s, sb, 1).content  # noqa: B018
    sb.add_fault("truncate", endpoint="Invoices")  # an error answer is cut short too
    missing = s.get(f"{sb.api_url}/Invoices/00000000-0000-4000-8000-000000000000", timeout=30)
    assert missing.status_code == 404 and len(missing.text) < len("The resource you're looking for")
    assert sb.stats()["faultsFired"] == {"truncate": 2, "malformed": 1, "drop": 1}
    assert page(s, sb, 1).text.endswith(end)


def test_a_slow_fault_delays_the_answer_and_the_sandbox_records_it(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=5, faults=FaultConfig(latency_ms=20))
    s = session(sb)
    sb.add_fault("slow", endpoint="Invoices", seconds=0.3)
    started = time.monotonic()
    assert page(s, sb, 1).status_code == 200
    assert time.monotonic() - started >= 0.3  # a lower bound only: never flaky
    assert page(s, sb, 1).status_code == 200  # the configured latency alone
    (row,) = [r for r in sb.stats()["endpoints"] if r["endpoint"] == "Invoices"]
    assert row["injectedDelayMs"] == 300 + 20 + 20
    assert sb.stats()["faultsFired"] == {"slow": 1}
