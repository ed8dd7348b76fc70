"""Faults: scripted and random, each kind seen by a real HTTP client."""

from __future__ import annotations

import json

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
