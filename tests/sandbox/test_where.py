"""Xero's `where` over real HTTP: OR/AND, string methods, literals, and 400 for anything unparseable."""

from __future__ import annotations

import pytest

from xero_sandbox import SandboxConfig, SandboxServer

from .test_data import Api


@pytest.fixture(scope="module")
def sb() -> SandboxServer:
    with SandboxServer(SandboxConfig(seed=5, tenants=1, invoices_per_tenant=400, rate_limits=False)) as sb:
        yield sb


@pytest.fixture(scope="module")
def api(sb) -> Api:
    return Api(sb)


@pytest.fixture(scope="module")
def everything(api) -> list[dict]:
    return api.all("Invoices")


def ids(rows: list[dict], key: str = "InvoiceID") -> list[str]:
    return [r[key] for r in rows]


@pytest.mark.parametrize(
    "where",
    [
        'Type=="ACCREC" OR Type=="ACCPAY"',
        'Type == "ACCREC" || Type == "ACCPAY"',
        'Type=="ACCREC" or Type=="ACCPAY"',
    ],
)
def test_or_returns_the_union(api, everything, where) -> None:
    got = api.all("Invoices", where=where)
    assert ids(got) == ids(everything) and len(got) == 400


def test_and_or_not_and_parentheses(api, everything) -> None:
    got = api.all("Invoices", where='(Status=="PAID" OR Status=="VOIDED") AND Type=="ACCPAY"')
    want = [i for i in everything if i["Status"] in ("PAID", "VOIDED") and i["Type"] == "ACCPAY"]
    assert want and ids(got) == ids(want)
    got = api.all("Invoices", where='Status=="DRAFT" && Type=="ACCREC" || Status=="SUBMITTED"')
    want = [
        i
        for i in everything
        if (i["Status"] == "DRAFT" and i["Type"] == "ACCREC") or i["Status"] == "SUBMITTED"
    ]
    assert want and ids(got) == ids(want)
    got = api.all("Invoices", where='NOT (Type=="ACCREC") AND Total >= 100.5')
    want = [i for i in everything if i["Type"] != "ACCREC" and i["Total"] >= 100.5]
    assert want and ids(got) == ids(want)
    got = api.all("Invoices", where='Status != "PAID" AND Date >= DateTime(2025, 06, 01)')
    want = [i for i in everything if i["Status"] != "PAID" and i["DateString"] >= "2025-06-01"]
    assert want and ids(got) == ids(want)


def test_string_methods(api, everything) -> None:
    got = api.all("Invoices", where='InvoiceNumber.StartsWith("INV-00001")')
    want = [i for i in everything if i["InvoiceNumber"].startswith("INV-00001")]
    assert want and ids(got) == ids(want)
    sample = next(i for i in everything if " " in i["Contact"]["Name"])
    word = sample["Contact"]["Name"].split()[0]
    got = api.all("Invoices", where=f'Contact.Name.Contains("{word}") AND Type=="ACCREC"')
    want = [i for i in everything if word in i["Contact"]["Name"] and i["Type"] == "ACCREC"]
    assert ids(got) == ids(want)
    contacts = api.all("Contacts", includeArchived="true")
    got = api.all("Contacts", includeArchived="true", where='EmailAddress.EndsWith("1@example.com")')
    want = [c for c in contacts if c["EmailAddress"].endswith("1@example.com")]
    assert want and ids(got, "ContactID") == ids(want, "ContactID")
    cid = sample["Contact"]["ContactID"]
    got = api.all("Invoices", where=f'Contact.ContactID == Guid("{cid.upper()}")')
    assert ids(got) == ids([i for i in everything if i["Contact"]["ContactID"] == cid])


def test_other_resources_share_the_parser(api) -> None:
    payments = api.all("Payments")
    got = api.all("Payments", where='PaymentType=="ACCPAYPAYMENT" OR Amount > 1000')
    want = [p for p in payments if p["PaymentType"] == "ACCPAYPAYMENT" or p["Amount"] > 1000]
    assert want and ids(got, "PaymentID") == ids(want, "PaymentID")
    contacts = api.all("Contacts", includeArchived="true")
    got = api.all("Contacts", includeArchived="true", where="IsSupplier && !IsCustomer")
    want = [c for c in contacts if c["IsSupplier"] and not c["IsCustomer"]]
    assert ids(got, "ContactID") == ids(want, "ContactID")


@pytest.mark.parametrize(
    "where",
    [
        'Type=="ACCREC" XOR Type=="ACCPAY"',
        'Type=="ACCREC" OR',
        '(Type=="ACCREC"',
        "Status = nonsense",
        'Nonsense=="x"',
        'Total=="12"',
        'Type > 5',
        'Type.StartsWith(5)',
        'Total.Contains("1")',
        'Type.ToUpper()=="ACCREC"',
        'Type=="ACCREC" Status=="PAID"',
        "Date >= DateTime(2025, 13, 1)",
        'Type=="unterminated',
        "",
    ],
)
def test_unparseable_where_is_a_400_not_wrong_rows(api, where) -> None:
    r = api.raw("Invoices", where=where, page=1)
    if where == "":
        assert r.status_code == 200  # an empty where is no filter
        return
    assert r.status_code == 400, (where, r.text[:200])
    assert r.json()["Type"] == "ValidationException"
    # also when the query would not scan a single row (IDs), and on the XML default
    r = api.raw("Invoices", where=where, IDs="00000000-0000-4000-8000-000000000000")
    assert r.status_code == 400


def test_accounts_use_the_general_where(api) -> None:
    accounts = api.get("Accounts")["Accounts"]
    assert {a["Status"] for a in accounts} >= {"ACTIVE"}
    got = api.get("Accounts", where='Type=="BANK"')["Accounts"]
    want = [a for a in accounts if a["Type"] == "BANK"]
    assert want and got == want
    got = api.get("Accounts", where='Class=="REVENUE" OR Class=="EXPENSE"')["Accounts"]
    want = [a for a in accounts if a["Class"] in ("REVENUE", "EXPENSE")]
    assert want and len(want) < len(accounts) and got == want
    got = api.get("Accounts", where='Status=="ACTIVE" AND Code.StartsWith("4")')["Accounts"]
    want = [a for a in accounts if a["Status"] == "ACTIVE" and a["Code"].startswith("4")]
    assert want and got == want
    got = api.get("Accounts", where='Status == "ACTIVE"')["Accounts"]
    assert got == [a for a in accounts if a["Status"] == "ACTIVE"]
    ordered = api.get("Accounts", order="Name DESC")["Accounts"]
    assert [a["Name"] for a in ordered] == sorted((a["Name"] for a in accounts), reverse=True)
    for bad in ('Type=="BANK" OR', 'Colour=="red"', "Code > 4"):
        r = api.raw("Accounts", where=bad)
        assert r.status_code == 400 and r.json()["Type"] == "ValidationException", bad
