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


def test_a_page_served_again_is_the_same_page_until_the_data_changes(xero_sandbox_server: SandboxServer,
                                                                   api) -> None:
    """List pages are kept serialised (the page cache): a repeat is answered from it, with a fresh
    envelope, and any change of the tenant's data makes the next answer new."""
    sb = xero_sandbox_server
    tenant = sb.tenants[0].tenant_id
    params = {"page": 1, "pageSize": 10, "order": "UpdatedDateUTC ASC"}

    def page() -> dict:
        r = api.get("Invoices", tenant, params)
        assert r.status_code == 200
        return r.json()

    first, again = page(), page()
    assert again["Invoices"] == first["Invoices"] and again["pagination"] == first["pagination"]
    assert again["Id"] != first["Id"]  # the envelope is each answer's own
    assert sb.sandbox.pages.bytes > 0  # served from the cache, which is on by default
    oldest = sorted(sb.records(tenant, include_deleted=True),
                    key=lambda r: (r["UpdatedDateUTC"], r["InvoiceID"]))
    assert [(i["InvoiceID"], i["Total"]) for i in first["Invoices"]] == [
        (r["InvoiceID"], r["Total"]) for r in oldest[:10]]

    # A change to a record on the page: the next answer shows it.
    invoice = next(i for i in first["Invoices"] if i["Status"] == "AUTHORISED")
    sb.mutate(tenant, "edit_invoice", invoice_id=invoice["InvoiceID"], reference="changed after caching")
    everything = api.get("Invoices", tenant, {"page": 1, "pageSize": 1000, "order": "UpdatedDateUTC ASC"})
    [changed] = [i for i in everything.json()["Invoices"] if i["InvoiceID"] == invoice["InvoiceID"]]
    assert changed["Reference"] == "changed after caching"
    assert [i["Reference"] for i in page()["Invoices"] if i["InvoiceID"] == invoice["InvoiceID"]] in (
        [], ["changed after caching"])  # moved to the end (newest), or still on page 1 and changed
