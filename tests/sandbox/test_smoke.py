"""The thin contract other rooms integrate against: start, authorize, page invoices, truth."""

from __future__ import annotations

from decimal import Decimal

from xero_sandbox import SandboxConfig, SandboxServer


def test_pages_match_truth(xero_sandbox_server: SandboxServer, api) -> None:
    sb = xero_sandbox_server
    assert len(sb.tenants) == 2
    for tenant in sb.tenants:
        seen: dict[str, dict] = {}
        page = 1
        while True:
            r = api.get("Invoices", tenant.tenant_id, {"page": page, "pageSize": 7})
            assert r.status_code == 200
            batch = r.json()["Invoices"]
            for inv in batch:
                seen[inv["InvoiceID"]] = inv
            if len(batch) < 7:
                break
            page += 1
        truth = sb.truth(tenant.tenant_id, "Invoices")
        live = [i for i in seen.values() if i["Status"] != "DELETED"]
        assert truth["count"] == len(live)
        assert Decimal(truth["total"]) == sum(Decimal(str(i["Total"])) for i in live)


def test_same_config_same_bytes() -> None:
    cfg = SandboxConfig(seed=7, tenants=1, invoices_per_tenant=30)
    dumps = []
    for _ in range(2):
        with SandboxServer(cfg) as sb:
            tid = sb.tenants[0].tenant_id
            dumps.append((tid, list(sb.records(tid, "Invoices", include_deleted=True))))
    assert dumps[0] == dumps[1]
    assert len(dumps[0][1]) == 30
