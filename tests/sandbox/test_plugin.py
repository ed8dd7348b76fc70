"""The pytest fixtures other rooms use."""

from __future__ import annotations

import pytest
import requests

from xero_sandbox import SandboxConfig, SandboxServer


@pytest.fixture
def xero_sandbox_config() -> SandboxConfig:
    return SandboxConfig(seed=8, tenants=3, invoices_per_tenant=7)


def test_config_override_shapes_the_server(xero_sandbox_server: SandboxServer) -> None:
    sb = xero_sandbox_server
    assert len(sb.tenants) == 3
    assert all(
        sb.truth(t.tenant_id)["byStatus"] and sum(sb.truth(t.tenant_id)["byStatus"].values()) == 7
        for t in sb.tenants
    )
    assert sb.url.startswith("http://127.0.0.1:") and sb.env()["XERO_TOKEN_URL"] == f"{sb.url}/connect/token"


def test_session_server_and_token_helper(xero_sandbox_session: SandboxServer, xero_sandbox_token) -> None:
    tok = xero_sandbox_token(xero_sandbox_session)
    r = requests.get(
        xero_sandbox_session.connections_url,
        timeout=10,
        headers={"Authorization": f"Bearer {tok['access_token']}"},
    )
    assert r.status_code == 200 and len(r.json()) == 2


def test_factory_starts_independent_servers(xero_sandbox_factory) -> None:
    a = xero_sandbox_factory(seed=1, tenants=1, invoices_per_tenant=3)
    b = xero_sandbox_factory(SandboxConfig(seed=1, tenants=1, invoices_per_tenant=3))
    assert a.port != b.port and a.tenants == b.tenants
    assert list(a.records(a.tenants[0].tenant_id)) == list(b.records(b.tenants[0].tenant_id))
