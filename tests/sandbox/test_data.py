"""Data: realism and consistency, determinism, query parameters, mutations seen through If-Modified-Since."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from email.utils import format_datetime

import pytest
import requests

from xero_sandbox import Sandbox, SandboxConfig, SandboxServer
from xero_sandbox.data import TenantData
from xero_sandbox.pytest_plugin import sandbox_token

ZERO = Decimal("0")
CENT = Decimal("0.01")


def ms(net_date: str) -> int:
    return int(net_date[6:-2].split("+")[0])


class Api:
    def __init__(self, sb: SandboxServer, tenant: int = 0) -> None:
        self.sb = sb
        self.tid = sb.tenants[tenant].tenant_id
        self.s = requests.Session()
        self.s.headers.update(
            {
                "Authorization": f"Bearer {sandbox_token(sb)['access_token']}",
                "xero-tenant-id": self.tid,
                "Accept": "application/json",
            }
        )

    def raw(self, path: str, headers: dict | None = None, **params: object) -> requests.Response:
        return self.s.get(f"{self.sb.api_url}/{path}", params=params, headers=headers or {}, timeout=60)

    def get(self, path: str, headers: dict | None = None, **params: object) -> dict:
        r = self.raw(path, headers, **params)
        assert r.status_code == 200, r.text
        return json.loads(r.content, parse_float=Decimal)  # exact decimals, as a careful client reads them

    def all(self, path: str, headers: dict | None = None, **params: object) -> list[dict]:
        out, page = [], 1
        while True:
            batch = self.get(path, headers, page=page, pageSize=1000, **params)[path]
            out += batch
            if len(batch) < 1000:
                return out
            page += 1


@pytest.fixture(scope="module")
def big() -> SandboxServer:
    with SandboxServer(SandboxConfig(seed=9, tenants=2, invoices_per_tenant=1500, rate_limits=False)) as sb:
        yield sb


def test_invoice_amounts_are_consistent(big) -> None:
    api = Api(big)
    invoices = api.all("Invoices")
    assert len(invoices) == 1500
    base = big.sandbox.tenants[0].base_currency
    for inv in invoices:
        lines = inv["LineItems"]
        assert lines
        for ln in lines:
            # Xero keeps unit prices to 4 dp: 2-dp UnitAmount x Quantity is off by at most the two roundings
            slack = (1 + ln["Quantity"]) * CENT / 2
            assert abs(ln["LineAmount"] - ln["Quantity"] * ln["UnitAmount"]) <= slack
        line_sum = sum((ln["LineAmount"] for ln in lines), ZERO)
        tax_sum = sum((ln["TaxAmount"] for ln in lines), ZERO)
        assert inv["TotalTax"] == tax_sum
        if inv["LineAmountTypes"] == "Inclusive":
            assert inv["Total"] == line_sum and inv["SubTotal"] == line_sum - tax_sum
        else:
            assert inv["SubTotal"] == line_sum and inv["Total"] == line_sum + tax_sum
        if inv["LineAmountTypes"] == "NoTax":
            assert inv["TotalTax"] == 0
        assert inv["AmountPaid"] == sum((p["Amount"] for p in inv["Payments"]), ZERO)
        assert inv["AmountCredited"] == sum((c["AppliedAmount"] for c in inv["CreditNotes"]), ZERO)
        if inv["Status"] in ("VOIDED", "DELETED"):
            assert inv["AmountDue"] == 0 and inv["AmountPaid"] == 0
        else:
            assert inv["AmountDue"] == inv["Total"] - inv["AmountPaid"] - inv["AmountCredited"]
        if inv["Status"] == "PAID":
            assert inv["AmountDue"] == 0 and "FullyPaidOnDate" in inv
        if inv["Status"] == "AUTHORISED":
            assert inv["AmountDue"] > 0
        assert (inv["CurrencyRate"] == 1) == (inv["CurrencyCode"] == base)
        assert ms(inv["Date"]) <= ms(inv["DueDate"]) and ms(inv["Date"]) <= ms(inv["UpdatedDateUTC"])
        assert (
            inv["DateString"][:10] == datetime.fromtimestamp(ms(inv["Date"]) / 1000, UTC).date().isoformat()
        )
    updated = [ms(i["UpdatedDateUTC"]) for i in invoices]
    assert updated == sorted(updated)
    assert max(updated) <= int(big.config.anchor.timestamp() * 1000)


def test_fractional_quantities_and_4dp_unit_amounts(big) -> None:
    api = Api(big)
    two = api.all("Invoices")
    four = api.all("Invoices", unitdp=4)
    assert [i["InvoiceID"] for i in two] == [i["InvoiceID"] for i in four]
    lines2 = [ln for i in two for ln in i["LineItems"]]
    lines4 = [ln for i in four for ln in i["LineItems"]]
    assert len(lines2) == len(lines4) > 1000
    fractional = [ln for ln in lines4 if ln["Quantity"] != ln["Quantity"].to_integral_value()]
    precise = [ln for ln in lines4 if ln["UnitAmount"] != ln["UnitAmount"].quantize(CENT)]
    # about 5 % of lines each
    assert 0.02 * len(lines4) < len(fractional) < 0.09 * len(lines4)
    assert 0.02 * len(lines4) < len(precise) < 0.09 * len(lines4)
    for ln2, ln4 in zip(lines2, lines4, strict=True):
        assert ln4["UnitAmount"] == ln4["UnitAmount"].quantize(Decimal("0.0001"))
        assert ln2["UnitAmount"] == ln2["UnitAmount"].quantize(CENT)
        assert ln2["UnitAmount"] == ln4["UnitAmount"].quantize(CENT, rounding=ROUND_HALF_UP)
        assert ln2["Quantity"] == ln4["Quantity"] and ln2["LineAmount"] == ln4["LineAmount"]
        # the line amount is Quantity x the full-precision unit price, rounded half up to 2 dp
        exact = ln4["Quantity"] * ln4["UnitAmount"]
        assert ln4["LineAmount"] == exact.quantize(CENT, rounding=ROUND_HALF_UP)
    # 2-dp and 4-dp views agree on everything but UnitAmount; by id too; credit notes accept unitdp
    some = next(i for i in four if any(ln in precise for ln in i["LineItems"]))
    by_id = api.get(f"Invoices/{some['InvoiceID']}", unitdp=4)["Invoices"][0]
    assert [ln["UnitAmount"] for ln in by_id["LineItems"]] == [ln["UnitAmount"] for ln in some["LineItems"]]
    assert api.get("CreditNotes", page=1, unitdp=4)["CreditNotes"]
    assert api.raw("Invoices", unitdp="four").status_code == 400


def test_mutations_take_fractional_quantities_and_4dp_prices(xero_sandbox_server) -> None:
    api = Api(xero_sandbox_server)
    made = xero_sandbox_server.mutate(
        api.tid,
        "create_invoice",
        status="AUTHORISED",
        line_amount_types="NoTax",
        lines=[{"quantity": "2.5", "unit_amount": "10.3333"}, {"quantity": 1, "unit_amount": "5.00"}],
    )
    got = api.get(f"Invoices/{made['InvoiceID']}", unitdp=4)["Invoices"][0]
    assert [(ln["Quantity"], ln["UnitAmount"], ln["LineAmount"]) for ln in got["LineItems"]] == [
        (Decimal("2.5"), Decimal("10.3333"), Decimal("25.83")),
        (Decimal("1.0"), Decimal("5.0"), Decimal("5.0")),
    ]
    assert got["Total"] == Decimal("30.83")


def test_payments_credit_notes_and_contacts_explain_invoices(big) -> None:
    api = Api(big)
    invoices = {i["InvoiceID"]: i for i in api.all("Invoices")}
    paid: dict[str, Decimal] = defaultdict(Decimal)
    for p in api.all("Payments"):
        inv = invoices[p["Invoice"]["InvoiceID"]]
        assert p["PaymentType"] == ("ACCRECPAYMENT" if inv["Type"] == "ACCREC" else "ACCPAYPAYMENT")
        assert p["Invoice"]["CurrencyCode"] == inv["CurrencyCode"]
        paid[inv["InvoiceID"]] += p["Amount"]
    assert all(paid.get(k, ZERO) == v["AmountPaid"] for k, v in invoices.items())
    credited: dict[str, Decimal] = defaultdict(Decimal)
    notes = api.all("CreditNotes")
    assert notes
    for cn in notes:
        alloc = sum((a["Amount"] for a in cn["Allocations"]), ZERO)
        if cn["Status"] in ("VOIDED", "DELETED"):
            assert cn["RemainingCredit"] == 0 and alloc == 0
        else:
            assert cn["RemainingCredit"] == cn["Total"] - alloc
        for a in cn["Allocations"]:
            credited[a["Invoice"]["InvoiceID"]] += a["Amount"]
    assert any(cn["RemainingCredit"] > 0 for cn in notes)
    assert all(credited.get(k, ZERO) == v["AmountCredited"] for k, v in invoices.items())
    contacts = {c["ContactID"]: c for c in api.all("Contacts", includeArchived="true")}
    used = {i["Contact"]["ContactID"] for i in invoices.values()}
    assert used <= set(contacts) and len(used) < len(invoices) / 5  # contacts are shared
    for cid in list(used)[:20]:
        mine = [i for i in invoices.values() if i["Contact"]["ContactID"] == cid]
        ar = sum(
            (i["AmountDue"] for i in mine if i["Type"] == "ACCREC" and i["Status"] == "AUTHORISED"), ZERO
        )
        assert contacts[cid]["Balances"]["AccountsReceivable"]["Outstanding"] == ar


def test_truth_matches_a_full_sync(big) -> None:
    for tenant in (0, 1):
        api = Api(big, tenant)
        invoices = [i for i in api.all("Invoices") if i["Status"] != "DELETED"]
        truth = big.truth(api.tid, "Invoices")
        assert truth["count"] == len(invoices)
        assert Decimal(truth["total"]) == sum((i["Total"] for i in invoices), ZERO)
        assert truth["byStatus"].get("DELETED", 0) == 1500 - len(invoices)
        over_http = requests.get(
            f"{big.url}/__sandbox/tenants/{api.tid}/truth", params={"resource": "Invoices"}, timeout=30
        ).json()
        assert over_http["count"] == truth["count"] and over_http["total"] == truth["total"]
        lines = requests.get(
            f"{big.url}/__sandbox/tenants/{api.tid}/truth",
            params={"resource": "Invoices", "format": "jsonl"},
            timeout=60,
        ).text.splitlines()
        by_id = {r["InvoiceID"]: r for r in map(json.loads, lines)}
        assert set(by_id) == {i["InvoiceID"] for i in invoices}
        one = invoices[5]
        assert by_id[one["InvoiceID"]]["Total"] == float(one["Total"])
        for resource in ("Payments", "CreditNotes", "Contacts", "Accounts"):
            t = big.truth(api.tid, resource)
            assert t["count"] > 0 and t["resource"] == resource


def test_generation_is_deterministic_from_the_seed() -> None:
    a, b = Sandbox(SandboxConfig(seed=1, tenants=2)), Sandbox(SandboxConfig(seed=1, tenants=2))
    c = Sandbox(SandboxConfig(seed=2, tenants=2))
    assert [t.tenant_id for t in a.tenant_infos()] == [t.tenant_id for t in b.tenant_infos()]
    assert {t.tenant_id for t in a.tenant_infos()}.isdisjoint(t.tenant_id for t in c.tenant_infos())
    tid = a.tenant_infos()[1].tenant_id
    for resource in ("Invoices", "Payments", "CreditNotes", "Contacts", "Accounts"):
        assert list(a.records(tid, resource, True)) == list(b.records(tid, resource, True))
    later = Sandbox(SandboxConfig(seed=1, tenants=2, anchor=datetime(2027, 1, 1, tzinfo=UTC)))
    moved = next(later.records(later.tenant_infos()[0].tenant_id, "Invoices", True))
    first = next(a.records(a.tenant_infos()[0].tenant_id, "Invoices", True))
    assert ms(moved["UpdatedDateUTC"]) - ms(first["UpdatedDateUTC"]) == 365 * 86_400_000


def test_if_modified_since_sees_every_change(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    api = Api(sb)
    invoices = api.all("Invoices")
    last = max(ms(i["UpdatedDateUTC"]) for i in invoices)
    # If-Modified-Since is compared at whole seconds (Xero-like): ask from the next second after the last one
    nxt = (last // 1000 + 1) * 1000
    since = {"If-Modified-Since": datetime.fromtimestamp(nxt / 1000, UTC).isoformat(timespec="milliseconds")}
    assert api.all("Invoices", since) == []
    before = sb.truth(api.tid)
    by_status = defaultdict(list)
    for i in invoices:
        by_status[i["Status"]].append(i)
    unpaid = [i for i in by_status["AUTHORISED"] if i["AmountPaid"] == 0 and i["AmountCredited"] == 0]
    sb.advance_clock(5)
    paid = by_status["AUTHORISED"][0]
    sb.mutate(api.tid, "pay_invoice", invoice_id=paid["InvoiceID"])
    voided = next(i for i in unpaid if i["InvoiceID"] != paid["InvoiceID"])
    sb.mutate(api.tid, "void_invoice", invoice_id=voided["InvoiceID"])
    deleted = by_status["DRAFT"][0]
    sb.mutate(api.tid, "delete_invoice", invoice_id=deleted["InvoiceID"])
    created = sb.mutate(api.tid, "create_invoice", status="AUTHORISED")
    edited = by_status["PAID"][0]
    sb.mutate(api.tid, "edit_invoice", invoice_id=edited["InvoiceID"], reference="changed")
    silent = by_status["PAID"][1]
    sb.mutate(api.tid, "edit_invoice", invoice_id=silent["InvoiceID"], account_code="260")
    changed = {i["InvoiceID"]: i for i in api.all("Invoices", since)}
    assert set(changed) == {
        paid["InvoiceID"],
        voided["InvoiceID"],
        deleted["InvoiceID"],
        created["InvoiceID"],
        edited["InvoiceID"],
    }
    assert changed[paid["InvoiceID"]]["Status"] == "PAID"
    assert changed[voided["InvoiceID"]]["Status"] == "VOIDED"
    assert changed[deleted["InvoiceID"]]["Status"] == "DELETED"
    assert changed[edited["InvoiceID"]]["Reference"] == "changed"
    # Xero does not bump UpdatedDateUTC for an account code: only a full re-sync sees it.
    again = api.get(f"Invoices/{silent['InvoiceID']}")["Invoices"][0]
    assert {ln["AccountCode"] for ln in again["LineItems"]} == {"260"}
    assert again["UpdatedDateUTC"] == silent["UpdatedDateUTC"]
    after = sb.truth(api.tid)
    assert after["count"] == before["count"] - 1 + 1  # one deleted, one created
    assert Decimal(after["total"]) == (
        Decimal(before["total"]) - Decimal(str(deleted["Total"])) + Decimal(str(created["Total"]))
    )
    payments = api.all("Payments", since)
    assert [p["Invoice"]["InvoiceID"] for p in payments] == [paid["InvoiceID"]]
    # ordered by UpdatedDateUTC: the changes come last, in the order they were made
    tail = [i["InvoiceID"] for i in api.all("Invoices")[-5:]]
    assert tail == [
        paid["InvoiceID"],
        voided["InvoiceID"],
        deleted["InvoiceID"],
        created["InvoiceID"],
        edited["InvoiceID"],
    ]


def test_if_modified_since_is_coarse_by_default_and_batches_share_a_timestamp(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    api = Api(sb)
    invoices = api.all("Invoices")
    rec = invoices[25]
    at = ms(rec["UpdatedDateUTC"])
    exact = datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")
    got = api.all("Invoices", {"If-Modified-Since": exact})
    # the record changed at that very instant comes back again (and everything from the same second)
    assert rec["InvoiceID"] in {i["InvoiceID"] for i in got}
    assert [i["InvoiceID"] for i in got] == [
        i["InvoiceID"] for i in invoices if ms(i["UpdatedDateUTC"]) >= at - at % 1000
    ]
    sb.advance_clock(10.0004)  # not on a whole second
    applied = sb.mutate(api.tid, "random", count=6, seed=3)["applied"]
    changed_ids = {a["id"] for a in applied}
    assert len(applied) == 6
    changed = [i for i in api.all("Invoices") if i["InvoiceID"] in changed_ids]
    stamps = {i["UpdatedDateUTC"] for i in changed}
    assert len(changed) == len(changed_ids) and len(stamps) == 1  # one save, one timestamp
    stamp = ms(stamps.pop())
    # a client that remembered that timestamp and asks again still gets the whole batch: it must de-duplicate
    again = api.all(
        "Invoices",
        {"If-Modified-Since": datetime.fromtimestamp(stamp / 1000, UTC).isoformat(timespec="milliseconds")},
    )
    assert changed_ids <= {i["InvoiceID"] for i in again}
    # separate mutations still get distinct, increasing times
    a = sb.mutate(api.tid, "create_invoice", status="DRAFT")
    b = sb.mutate(api.tid, "create_invoice", status="DRAFT")
    assert stamp < ms(a["UpdatedDateUTC"]) < ms(b["UpdatedDateUTC"])
    # an explicit batch shares one timestamp too
    out = sb.mutate(
        api.tid,
        "batch",
        mutations=[
            {"action": "create_invoice", "status": "AUTHORISED"},
            {"action": "edit_invoice", "invoice_id": a["InvoiceID"], "reference": "batched"},
        ],
    )["applied"]
    assert out[0]["UpdatedDateUTC"] == out[1]["UpdatedDateUTC"] and out[1]["Reference"] == "batched"


def test_if_modified_since_formats_and_granularity(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=30, ims_granularity_seconds=1)
    api = Api(sb)
    invoices = api.all("Invoices")
    cut = ms(invoices[19]["UpdatedDateUTC"])
    dt = datetime.fromtimestamp(cut / 1000, UTC)
    http_date = format_datetime(dt, usegmt=True)
    for header in (http_date, dt.strftime("%Y-%m-%dT%H:%M:%S"), dt.isoformat(timespec="milliseconds")):
        got = api.all("Invoices", {"If-Modified-Since": header})
        # Truncated to the second: record 19 itself comes back again (overlap, never a gap).
        assert [i["InvoiceID"] for i in got] == [i["InvoiceID"] for i in invoices[19:]]
    r = api.raw("Invoices", {"If-Modified-Since": "yesterday-ish"})
    assert r.status_code == 400 and r.json()["Type"] == "ValidationException"


def test_query_parameters(big) -> None:
    api = Api(big)
    everything = api.all("Invoices")
    desc = api.all("Invoices", order="UpdatedDateUTC DESC")
    assert [i["InvoiceID"] for i in desc] == [i["InvoiceID"] for i in reversed(everything)]
    by_total = api.get("Invoices", page=1, pageSize=50, order="Total DESC")["Invoices"]
    assert [i["Total"] for i in by_total] == sorted((i["Total"] for i in everything), reverse=True)[:50]
    some = api.all("Invoices", Statuses="PAID,VOIDED")
    assert {i["Status"] for i in some} == {"PAID", "VOIDED"}
    assert len(some) == sum(i["Status"] in ("PAID", "VOIDED") for i in everything)
    ids = [everything[3]["InvoiceID"], everything[700]["InvoiceID"]]
    assert [i["InvoiceID"] for i in api.get("Invoices", IDs=",".join(ids))["Invoices"]] == ids
    where = api.all("Invoices", where='Status=="AUTHORISED" AND Type=="ACCREC"')
    assert where and all(i["Status"] == "AUTHORISED" and i["Type"] == "ACCREC" for i in where)
    assert len(where) == sum(i["Status"] == "AUTHORISED" and i["Type"] == "ACCREC" for i in everything)
    summary = api.get("Invoices", page=1, summaryOnly="true")["Invoices"][0]
    assert "LineItems" not in summary and "Payments" not in summary and "Total" in summary
    unpaged = api.get("Invoices")
    assert unpaged["pagination"] == {"page": 1, "pageSize": 100, "pageCount": 15, "itemCount": 1500}
    assert all(i["LineItems"] == [] for i in unpaged["Invoices"])
    assert api.get("Invoices", page=99, pageSize=100)["Invoices"] == []
    r = api.raw("Invoices", page=1, pageSize=1001)
    assert r.status_code == 400 and r.json()["ErrorNumber"] == 10
    assert api.raw("Invoices", IDs="not-a-guid").status_code == 400
    assert api.raw("Invoices", where="Status = nonsense").status_code == 400
    assert api.raw("Invoices/00000000-0000-4000-8000-000000000000").status_code == 404
    assert api.raw("Widgets").status_code == 404
    number = next(i for i in everything if i["InvoiceNumber"].startswith("INV-"))
    assert api.get(f"Invoices/{number['InvoiceNumber']}")["Invoices"][0]["InvoiceID"] == number["InvoiceID"]
    active = api.all("Contacts")
    with_archived = api.all("Contacts", includeArchived="true")
    assert all(c["ContactStatus"] == "ACTIVE" for c in active)
    assert len(with_archived) > len(active)
    accounts = api.get("Accounts")["Accounts"]
    assert {a["Type"] for a in accounts} >= {"BANK", "REVENUE", "EXPENSE"}
    org = api.get("Organisation")["Organisations"][0]
    assert org["OrganisationID"] == api.tid and org["BaseCurrency"] == big.sandbox.tenants[0].base_currency


def test_large_filtered_scans_can_be_refused(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=200, max_scan_rows=100)
    api = Api(sb)
    r = api.raw("Invoices", page=1, Statuses="PAID")
    assert r.status_code == 400 and r.json()["Type"] == "ValidationException"
    assert api.raw("Invoices", page=1).status_code == 200  # plain paging is always fine


def test_mutation_validation_over_http(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    api = Api(sb)
    invoices = api.all("Invoices")
    base = f"{sb.url}/__sandbox/tenants/{api.tid}/mutations"
    paid = next(i for i in invoices if i["Status"] == "PAID")
    r = requests.post(base, json={"action": "void_invoice", "invoice_id": paid["InvoiceID"]}, timeout=10)
    assert r.status_code == 400 and "void" in r.json()["error"]
    auth = next(i for i in invoices if i["Status"] == "AUTHORISED")
    assert (
        requests.post(
            base, json={"action": "delete_invoice", "invoice_id": auth["InvoiceID"]}, timeout=10
        ).status_code
        == 400
    )
    assert (
        requests.post(
            base,
            json={"action": "pay_invoice", "invoice_id": auth["InvoiceID"], "amount": "999999999.00"},
            timeout=10,
        ).status_code
        == 400
    )
    assert requests.post(base, json={"action": "explode"}, timeout=10).status_code == 400
    assert (
        requests.post(
            f"{sb.url}/__sandbox/tenants/nope/mutations", json={"action": "random"}, timeout=10
        ).status_code
        == 404
    )
    r = requests.post(
        base, json={"action": "pay_invoice", "invoice_id": auth["InvoiceID"], "amount": "0.01"}, timeout=10
    )
    assert r.status_code == 200 and Decimal(str(r.json()["Payment"]["Amount"])) == Decimal("0.01")
    burst = requests.post(base, json={"action": "random", "count": 12, "seed": 1}, timeout=30).json()
    assert len(burst["applied"]) == 12


def test_contact_mutations(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    api = Api(sb)
    c = sb.mutate(api.tid, "create_contact", name="Ms New Client", email="new@example.com")
    with pytest.raises(Exception, match="unique"):
        sb.mutate(api.tid, "create_contact", name="Ms New Client")
    sb.mutate(api.tid, "archive_contact", contact_id=c["ContactID"])
    assert c["ContactID"] not in {x["ContactID"] for x in api.all("Contacts")}
    archived = api.get(f"Contacts/{c['ContactID']}")["Contacts"][0]
    assert archived["ContactStatus"] == "ARCHIVED"


def test_a_million_invoices_are_lazy() -> None:
    cfg = SandboxConfig(seed=42, tenants=1, invoices_per_tenant=1_000_000)
    t = TenantData(cfg, 0)
    assert t.ordered_count("Invoices", None) == 1_000_000
    last = t.ordered_slice("Invoices", None, 999_000, 1_000_000)
    assert last == list(range(999_000, 1_000_000))
    ups = [t.base_updated("Invoices", i) for i in (0, 1, 2, 500_000, 999_998, 999_999)]
    assert ups == sorted(set(ups))
    cut = t.base_updated("Invoices", 750_000)
    assert t.ordered_count("Invoices", cut) == 249_999
    assert t.decode_id("Invoices", t.encode_id("Invoices", 876_543)) == 876_543
    st = dict(t.invoice(500_000), reference="moved")
    t.put("Invoices", st, bump_ms=cfg.anchor.timestamp() * 1000 + 10)
    assert t.ordered_count("Invoices", None) == 1_000_000
    assert t.ordered_slice("Invoices", None, 999_999, 1_000_000) == [500_000]
    assert t.ordered_slice("Invoices", None, 499_999, 500_001) == [499_999, 500_001]
    assert t.ordered_count("Invoices", cut) == 250_000


def test_xml_unless_json_is_asked_for(xero_sandbox_server) -> None:
    import xml.etree.ElementTree as ET

    sb = xero_sandbox_server
    api = Api(sb)
    r = api.s.get(
        f"{sb.api_url}/Invoices", params={"page": 1, "pageSize": 5}, headers={"Accept": "*/*"}, timeout=30
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(r.content)  # noqa: S314 (our own loopback server)
    invoices = root.find("Invoices")
    assert root.tag == "Response" and root.findtext("Status") == "OK" and len(invoices) == 5
    first = invoices[0]
    as_json = api.get("Invoices", page=1, pageSize=5)["Invoices"][0]
    assert first.findtext("InvoiceID") == as_json["InvoiceID"]
    assert first.findtext("Date") == as_json["DateString"]  # ISO dates in XML, no .NET dates
    assert first.find("DateString") is None
    assert Decimal(first.findtext("Total")) == as_json["Total"]
    assert first.find("LineItems")[0].tag == "LineItem"
    bad = api.s.get(
        f"{sb.api_url}/Invoices", params={"pageSize": 5000}, headers={"Accept": "text/xml"}, timeout=30
    )
    assert bad.status_code == 400 and ET.fromstring(bad.content).findtext("Type") == "ValidationException"  # noqa: S314


def test_clock_can_start_later_without_changing_generated_data() -> None:
    late = datetime(2026, 11, 1, tzinfo=UTC)
    a = Sandbox(SandboxConfig(seed=4, tenants=1, invoices_per_tenant=20))
    b = Sandbox(SandboxConfig(seed=4, tenants=1, invoices_per_tenant=20, clock_start=late))
    tid = a.tenant_infos()[0].tenant_id
    assert list(a.records(tid, "Invoices", True)) == list(b.records(tid, "Invoices", True))
    assert b.clock.now_ms() >= int(late.timestamp() * 1000) > a.clock.now_ms()
    created = b.mutator.apply(tid, "create_invoice")
    assert ms(created["UpdatedDateUTC"]) >= int(late.timestamp() * 1000)


def test_large_organisations_must_filter_with_if_modified_since() -> None:
    from xero_sandbox.query import QueryCache, ValidationError, build_query, run_query

    cfg = SandboxConfig(seed=42, tenants=1, invoices_per_tenant=1_000_000)
    t = TenantData(cfg, 0)
    q = build_query(t, "Invoices", {"page": "1", "Statuses": "PAID"}, None, 0)
    with pytest.raises(ValidationError):
        run_query(t, q, QueryCache(), cfg.max_scan_rows)
    since = datetime.fromtimestamp(t.base_updated("Invoices", 999_900) / 1000, UTC).isoformat()
    q = build_query(t, "Invoices", {"page": "1", "Statuses": "PAID"}, since, 0)
    states, count = run_query(t, q, QueryCache(), cfg.max_scan_rows)
    assert 0 < count < 100 and all(st["status"] == "PAID" for st in states)


def test_contact_ids_and_invoice_numbers_filters(big) -> None:
    api = Api(big)
    everything = api.all("Invoices")
    contact = everything[0]["Contact"]["ContactID"]
    mine = api.all("Invoices", ContactIDs=contact)
    assert mine and {i["Contact"]["ContactID"] for i in mine} == {contact}
    assert len(mine) == sum(i["Contact"]["ContactID"] == contact for i in everything)
    assert api.all("Invoices", ContactIDs="not-a-guid") == []
    numbers = [i["InvoiceNumber"] for i in everything if i["InvoiceNumber"].startswith("INV-")][:3]
    got = api.all("Invoices", InvoiceNumbers=",".join(numbers))
    assert sorted(i["InvoiceNumber"] for i in got) == sorted(numbers)


def test_contact_balances_are_exact_for_a_tenant_over_100k_invoices() -> None:
    """Balances come from the invoices at any size (they used to be zeros above 100,000 invoices), follow
    run-time payments, and move from outstanding to overdue as the sandbox clock passes due dates."""
    cfg = SandboxConfig(
        seed=4,
        tenants=1,
        invoices_per_tenant=100_001,
        contacts_per_tenant=50,
        rate_limits=False,
        access_token_lifetime=30 * 86400,  # the clock moves 15 days below
    )
    with SandboxServer(cfg) as sb:
        api = Api(sb)
        t = sb.sandbox.tenants[0]

        def expected() -> dict[str, list[Decimal]]:
            today = sb.now_ms() // 86_400_000
            out: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO] * 4)
            for i in range(t.n_invoices + t.created["Invoices"]):
                changed = i in t.overlay["Invoices"] or i >= t.n_invoices
                if changed or t.base_invoice_status(i) == "AUTHORISED":  # (skips generating the others)
                    st = t.invoice(i)
                    if st is not None and st["status"] == "AUTHORISED":
                        due = Decimal(t.amount_due(st)) / 100
                        row = out[t.encode_id("Contacts", st["contact"])]
                        off = 0 if st["type"] == "ACCREC" else 2
                        row[off] += due
                        if st["due_day"] < today:
                            row[off + 1] += due
            return out

        def balances() -> dict[str, list[Decimal]]:
            out = {}
            for c in api.get("Contacts", page=1, includeArchived="true")["Contacts"]:
                b = c["Balances"]
                out[c["ContactID"]] = [
                    b[side][kind]
                    for side in ("AccountsReceivable", "AccountsPayable")
                    for kind in ("Outstanding", "Overdue")
                ]
            return out

        want = expected()
        got = balances()
        assert len(got) == 50 and sum(v[0] for v in got.values()) > 0
        assert got == {cid: want.get(cid, [ZERO] * 4) for cid in got}
        # A payment lowers its contact's balance; a new invoice due in 10 days is outstanding, not overdue.
        unpaid = next(
            i
            for i in api.get("Invoices", page=1, pageSize=200)["Invoices"]
            if i["Status"] == "AUTHORISED" and i["Type"] == "ACCREC" and i["AmountDue"] > 1
        )
        payer = unpaid["Contact"]["ContactID"]
        other = next(c for c in got if c != payer)
        sb.mutate(api.tid, "pay_invoice", invoice_id=unpaid["InvoiceID"], amount="1.00")
        new = sb.mutate(api.tid, "create_invoice", contact_id=other, due_date="2026-01-11")
        new_due = Decimal(str(new["AmountDue"]))
        after = balances()
        assert after == expected()
        assert after[payer][0] == got[payer][0] - 1
        assert after[other][0] == got[other][0] + new_due and after[other][1] == got[other][1]
        assert {c: v for c, v in after.items() if c not in (payer, other)} == {
            c: v for c, v in got.items() if c not in (payer, other)
        }
        sb.advance_clock(15 * 86400)  # past the new invoice's due date
        later = balances()
        assert later == expected() and later[other][1] >= after[other][1] + new_due


def test_contacts_summary_only_leaves_out_the_heavy_fields(big) -> None:
    api = Api(big)
    full = api.get("Contacts", page=1, includeArchived="true")["Contacts"]
    summary = api.get("Contacts", page=1, includeArchived="true", summaryOnly="true")["Contacts"]
    heavy = {"Addresses", "Phones", "ContactGroups", "ContactPersons", "Balances"}
    assert all("Balances" in c and "Addresses" in c for c in full)
    assert [c["ContactID"] for c in summary] == [c["ContactID"] for c in full]
    for s, f in zip(summary, full, strict=True):
        assert not heavy & set(s)
        assert s == {k: v for k, v in f.items() if k not in heavy}  # the light fields are all still there
    light = {"ContactID", "Name", "ContactStatus", "UpdatedDateUTC", "SalesDefaultLineAmountType"}
    assert light <= set(summary[0])
