"""Turn generator states into Xero's JSON: field names, .NET dates with ISO siblings, numeric amounts.

Amounts are exact integer cents until here. They are emitted as JSON numbers (as Xero does) by way of a
float: every amount below 10**13 cents has a shortest float repr equal to its 2-decimal value, so the
text on the wire is exact (e.g. 148062.76, 46.0).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from .data import CITIES, CONTACT_GROUPS, DAY_MS, ITEMS, TIMEZONES, TenantData

try:  # orjson is much faster for 1000-record pages; fall back to the standard library.
    import orjson

    def dumps(obj: object) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    import json

    def dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


_NET_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
# Element names of list items in Xero's XML.
_SINGULAR = {
    "Addresses": "Address",
    "Tracking": "TrackingCategory",
    "SalesTrackingCategories": "SalesTrackingCategory",
    "PurchasesTrackingCategories": "PurchasesTrackingCategory",
    "Elements": "DataContractBase",
}


def to_xml(body: dict, root: str = "Response") -> bytes:
    """Xero's XML rendering of a JSON body: ISO dates, no ``*String`` siblings, singular list items."""
    out: list[str] = ['<?xml version="1.0" encoding="utf-8"?>']

    def emit(name: str, value: object) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            out.append(f"<{name}>")
            for k, v in value.items():
                if not (k.endswith("String") and k[:-6] in value):
                    emit(k[:1].upper() + k[1:], v)
            out.append(f"</{name}>")
        elif isinstance(value, list):
            out.append(f"<{name}>")
            item = _SINGULAR.get(name) or (name[:-1] if name.endswith("s") else name)
            for v in value:
                emit(item, v)
            out.append(f"</{name}>")
        else:
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                m = _NET_DATE.match(value)
                if m:
                    ms = int(m[1])
                    text = iso_seconds(ms) + (f".{ms % 1000:03d}" if ms % 1000 else "")
                else:
                    text = escape(value)
            else:
                text = str(value)
            out.append(f"<{name}>{text}</{name}>")

    emit(root, body)
    return "".join(out).encode()


def net_date(ms: int, offset: bool = True) -> str:
    return f"/Date({ms}+0000)/" if offset else f"/Date({ms})/"


def iso_seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


_DAYS: dict[int, str] = {}


def day_string(day: int) -> str:
    got = _DAYS.get(day)
    if got is None:
        if len(_DAYS) > 100_000:
            _DAYS.clear()
        got = _DAYS[day] = iso_seconds(day * DAY_MS)
    return got


def money(cents: int) -> float:
    return cents / 100


def rate(micro: int) -> float:
    return micro / 1_000_000


def contact_summary(t: TenantData, cidx: int, *, number: bool = False) -> dict:
    """The contact inside a listed invoice, credit note or payment (``number``: with its ContactNumber, as
    Xero's Payments example shows it; its Invoices and CreditNotes examples do not)."""
    # Contacts repeat across invoices: cache the (immutable) summaries of unmodified generated contacts.
    # A fresh dict (and fresh lists) is returned each time, so callers cannot alter the cache by accident.
    modified = cidx in t.overlay["Contacts"]
    got = None if modified else t.summary_cache.get(cidx)
    if got is None:
        c = t.contact(cidx)
        got = {"ContactID": t.encode_id("Contacts", cidx), "Name": c["name"] if c else ""}
        got["ContactNumber"] = c.get("number", "") if c else ""
        if not modified:
            if len(t.summary_cache) > 50_000:
                t.summary_cache.clear()
            t.summary_cache[cidx] = got
    out = {"ContactID": got["ContactID"]}
    if number:
        out["ContactNumber"] = got["ContactNumber"]
    out.update(
        {
            "Name": got["Name"],
            "Addresses": [],
            "Phones": [],
            "ContactGroups": [],
            "ContactPersons": [],
            "HasValidationErrors": False,
        }
    )
    return out


# The contact Xero embeds in one invoice (GET Invoices/{id}) and in one credit note, per its examples.
INVOICE_CONTACT_KEYS = (
    "ContactID",
    "ContactStatus",
    "Name",
    "FirstName",
    "LastName",
    "EmailAddress",
    "BankAccountDetails",
    "Addresses",
    "Phones",
    "UpdatedDateUTC",
    "ContactGroups",
    "IsSupplier",
    "IsCustomer",
    "SalesTrackingCategories",
    "PurchasesTrackingCategories",
    "ContactPersons",
    "HasValidationErrors",
)
CREDIT_NOTE_CONTACT_KEYS = tuple(
    k
    for k in INVOICE_CONTACT_KEYS
    if k not in ("IsSupplier", "IsCustomer", "SalesTrackingCategories", "PurchasesTrackingCategories")
)
# What GET Contacts?summaryOnly=true leaves out: the nested and computed (heavy) fields.
CONTACT_HEAVY_KEYS = ("Addresses", "Phones", "ContactGroups", "ContactPersons", "Balances")


def contact_embedded(t: TenantData, c: dict, keys: tuple[str, ...]) -> dict:
    out = contact_full(t, c)
    out["SalesTrackingCategories"] = []
    out["PurchasesTrackingCategories"] = []
    return {k: out[k] for k in keys}


def contact_full(
    t: TenantData,
    c: dict,
    balances: tuple[int, int, int, int] | None = None,
    *,
    detail: bool = False,
    summary_only: bool = False,
) -> dict:
    """A contact as GET Contacts lists it (``summary_only``: without the heavy fields) or, with ``detail``,
    as GET Contacts/{id} returns it (tax types, default accounts, branding, batch payments, terms)."""
    city, region, postcode = c["city"] if isinstance(c["city"], (list, tuple)) else CITIES[0]
    upd = c["updated_ms"]
    out = {
        "ContactID": t.encode_id("Contacts", c["idx"]),
        "ContactNumber": c.get("number", ""),
        "AccountNumber": c["account_number"],
        "ContactStatus": c["status"],
        "Name": c["name"],
        "FirstName": c["first"],
        "LastName": c["last"],
        "EmailAddress": c["email"],
        "BankAccountDetails": "",
        "TaxNumber": c["tax_number"],
        "Addresses": [
            {
                "AddressType": "STREET",
                "City": "",
                "Region": "",
                "PostalCode": "",
                "Country": "",
                "AttentionTo": "",
            },
            {
                "AddressType": "POBOX",
                "AddressLine1": f"PO Box {c['idx'] + 100}",
                "AddressLine2": "",
                "AddressLine3": "",
                "AddressLine4": "",
                "City": city,
                "Region": region,
                "PostalCode": postcode,
                "Country": t.country,
                "AttentionTo": c["first"] if c.get("company_number") else "",
            },
        ],
        "Phones": [
            {"PhoneType": "DDI", "PhoneNumber": "", "PhoneAreaCode": "", "PhoneCountryCode": ""},
            {
                "PhoneType": "DEFAULT",
                "PhoneNumber": c["phone"],
                "PhoneAreaCode": "09",
                "PhoneCountryCode": "",
            },
            {"PhoneType": "FAX", "PhoneNumber": "", "PhoneAreaCode": "", "PhoneCountryCode": ""},
            {"PhoneType": "MOBILE", "PhoneNumber": "", "PhoneAreaCode": "", "PhoneCountryCode": ""},
        ],
        "UpdatedDateUTC": net_date(upd),
        "ContactGroups": [
            {
                "ContactGroupID": t.ids.encode("G", g),
                "Name": CONTACT_GROUPS[g],
                "Status": "ACTIVE",
                "Contacts": [],
                "HasValidationErrors": False,
            }
            for g in c.get("groups", ())
        ],
        "IsSupplier": c["is_supplier"],
        "IsCustomer": c["is_customer"],
        "DefaultCurrency": c["currency"],
        "ContactPersons": [
            {
                "FirstName": c["first"],
                "LastName": c["last"],
                "EmailAddress": c["email"],
                "IncludeInEmails": True,
            }
        ]
        if c.get("company_number")
        else [],
        "HasAttachments": False,
        "HasValidationErrors": False,
    }
    if c.get("company_number"):
        out["CompanyNumber"] = c["company_number"]
    out["SalesDefaultLineAmountType"] = "EXCLUSIVE"
    out["PurchasesDefaultLineAmountType"] = "EXCLUSIVE"
    if detail:
        out.update(
            {
                "AccountsReceivableTaxType": t.sale_tax,
                "AccountsPayableTaxType": t.purchase_tax,
                "Discount": 0.0,
                "Website": f"https://example.com/{c['account_number'].lower()}",
                "BrandingTheme": {"BrandingThemeID": t.branding_theme_id, "Name": "Standard"},
                "SalesDefaultAccountCode": "200",
                "PurchasesDefaultAccountCode": "429",
                "BatchPayments": {
                    "BankAccountNumber": f"12-3456-{c['idx'] + 1:07d}-00",
                    "BankAccountName": c["name"],
                    "Details": "",
                    "Code": "",
                    "Reference": "",
                },
                "PaymentTerms": {
                    "Bills": {"Day": 20, "Type": "OFFOLLOWINGMONTH"},
                    "Sales": {"Day": 14, "Type": "DAYSAFTERBILLDATE"},
                },
            }
        )
    if summary_only:
        return {k: v for k, v in out.items() if k not in CONTACT_HEAVY_KEYS}
    if balances is not None:
        # Raw outstanding/overdue amounts of the contact's invoices and bills (not converted, as Xero says).
        out["Balances"] = {
            "AccountsReceivable": {"Outstanding": money(balances[0]), "Overdue": money(balances[1])},
            "AccountsPayable": {"Outstanding": money(balances[2]), "Overdue": money(balances[3])},
        }
    return out


def _line_items(t: TenantData, kind: str, st: dict, tax_for_type: str, unit_dp: int = 2) -> list[dict]:
    out = []
    for ln in st["lines"]:
        out.append(
            {
                "ItemCode": ln.get("item_code", f"SVC-{ln['item'] + 1:02d}"),
                "Description": ln.get("description") or ITEMS[ln["item"]],
                # Xero keeps unit prices to 4 dp and shows them rounded to 2 unless asked with unitdp=4.
                "UnitAmount": ln["unit4"] / 10_000 if unit_dp == 4 and "unit4" in ln else money(ln["unit"]),
                "TaxType": "NONE" if ln["exempt"] or st["lat"] == "NoTax" else tax_for_type,
                "TaxAmount": money(ln["tax"]),
                "LineAmount": money(ln["amount"]),
                "AccountCode": ln["account"],
                "Tracking": [],
                "Quantity": float(ln["qty"]),  # up to 4 dp (some generated lines are fractional)
                "LineItemID": t.ids.encode("L" + kind[0], st["idx"] * 8 + ln["j"]),
                "ValidationErrors": [],
            }
        )
    return out


def invoice(
    t: TenantData,
    st: dict,
    *,
    lines: bool = True,
    summary_only: bool = False,
    full_contact: bool = False,
    unit_dp: int = 2,
) -> dict:
    rec = st["type"] == "ACCREC"
    out: dict = {
        "Type": st["type"],
        "InvoiceID": t.encode_id("Invoices", st["idx"]),
        "InvoiceNumber": st["number"],
        "Reference": st["reference"],
    }
    if not summary_only:
        pays = []
        for pidx in st["payments"]:
            p = t.payment(pidx)
            if p is None or p["status"] == "DELETED":
                continue
            pays.append(
                {
                    "PaymentID": t.encode_id("Payments", pidx),
                    "Date": net_date(p["date_day"] * DAY_MS),
                    "Amount": money(p["amount"]),
                    "Reference": p["reference"],
                    "CurrencyRate": rate(p["rate_micro"]),
                    "HasAccount": False,
                    "HasValidationErrors": False,
                }
            )
        cns = []
        for cidx in st["credit_notes"]:
            cn = t.credit_note(cidx)
            if cn is None:
                continue
            applied = sum(a for inv, a, _ in cn["allocations"] if inv == st["idx"])
            cns.append(
                {
                    "CreditNoteID": t.encode_id("CreditNotes", cidx),
                    "CreditNoteNumber": cn["number"],
                    "ID": t.encode_id("CreditNotes", cidx),
                    "AppliedAmount": money(applied),
                    "DateString": day_string(cn["date_day"]),
                    "Date": net_date(cn["date_day"] * DAY_MS),
                    "LineItems": [],
                    "Total": money(cn["total"]),
                    "HasErrors": False,
                }
            )
        out.update({"Payments": pays, "CreditNotes": cns, "Prepayments": [], "Overpayments": []})
    out.update(
        {
            "AmountDue": money(t.amount_due(st)),
            "AmountPaid": money(st["paid"]),
            "AmountCredited": money(st["credited"]),
        }
    )
    if rec:
        out["SentToContact"] = bool(st["sent"])
    out.update(
        {
            "CurrencyRate": rate(st["rate_micro"]),
            "IsDiscounted": False,
            "HasAttachments": False,
            "HasErrors": False,
            "Contact": (
                contact_embedded(t, t.contact(st["contact"]), INVOICE_CONTACT_KEYS)  # type: ignore[arg-type]
                if full_contact
                else contact_summary(t, st["contact"])
            ),
            "DateString": day_string(st["date_day"]),
            "Date": net_date(st["date_day"] * DAY_MS),
            "DueDateString": day_string(st["due_day"]),
            "DueDate": net_date(st["due_day"] * DAY_MS),
            "Status": st["status"],
            "LineAmountTypes": st["lat"],
        }
    )
    if not summary_only:
        out["LineItems"] = (
            _line_items(t, "Invoices", st, t.sale_tax if rec else t.purchase_tax, unit_dp) if lines else []
        )
    out.update(
        {
            "SubTotal": money(st["subtotal"]),
            "TotalTax": money(st["total_tax"]),
            "Total": money(st["total"]),
            "UpdatedDateUTC": net_date(st["updated_ms"]),
            "UpdatedDateUTCString": iso_seconds(st["updated_ms"]) + "Z",
            "CurrencyCode": st["currency"],
        }
    )
    if st["status"] == "PAID" and st.get("fully_paid_day") is not None:
        out["FullyPaidOnDate"] = net_date(st["fully_paid_day"] * DAY_MS)
    return out


def payment(t: TenantData, p: dict, *, detail: bool = False) -> dict:
    """A payment as GET Payments lists it or, with ``detail``, as GET Payments/{id} returns it: the account's
    name and the whole invoice (dates, amounts, status, lines)."""
    inv = t.invoice(p["invoice"])
    assert inv is not None
    bank_amount = (p["amount"] * 1_000_000 * 2 + p["rate_micro"]) // (2 * p["rate_micro"])
    account = {"AccountID": t.encode_id("Accounts", 0), "Code": p["account"]}
    if detail:
        account["Name"] = next(a["name"] for a in t.accounts() if a["code"] == p["account"])
        paid_invoice = invoice(t, inv)
        for key in ("AmountCredited", "HasAttachments"):  # not on a payment's invoice
            del paid_invoice[key]
    else:
        paid_invoice = {
            "Type": inv["type"],
            "InvoiceID": t.encode_id("Invoices", inv["idx"]),
            "InvoiceNumber": inv["number"],
            "Payments": [],
            "CreditNotes": [],
            "Prepayments": [],
            "Overpayments": [],
            "HasErrors": False,
            "IsDiscounted": False,
            "Contact": contact_summary(t, inv["contact"], number=True),
            "LineItems": [],
            "CurrencyCode": inv["currency"],
        }
    return {
        "PaymentID": t.encode_id("Payments", p["idx"]),
        "Date": net_date(p["date_day"] * DAY_MS),
        "BankAmount": money(bank_amount),
        "Amount": money(p["amount"]),
        "Reference": p["reference"],
        "CurrencyRate": rate(p["rate_micro"]),
        "PaymentType": "ACCRECPAYMENT" if inv["type"] == "ACCREC" else "ACCPAYPAYMENT",
        "Status": p["status"],
        "UpdatedDateUTC": net_date(p["updated_ms"]),
        "UpdatedDateUTCString": iso_seconds(p["updated_ms"]) + "Z",
        "HasAccount": True,
        "IsReconciled": bool(p["reconciled"]),
        "Account": account,
        "Invoice": paid_invoice,
        "HasValidationErrors": False,
    }


def credit_note(
    t: TenantData, cn: dict, *, summary_only: bool = False, unit_dp: int = 2, full_contact: bool = False
) -> dict:
    allocs = []
    for n, (inv_idx, amount, day) in enumerate(cn["allocations"]):
        inv = t.invoice(inv_idx)
        allocs.append(
            {
                "AllocationID": t.ids.encode("X", cn["idx"] * 8 + n),
                "Amount": money(amount),
                "Date": net_date(day * DAY_MS),
                "Invoice": {
                    "InvoiceID": t.encode_id("Invoices", inv_idx),
                    "InvoiceNumber": inv["number"] if inv else "",
                    "Payments": [],
                    "CreditNotes": [],
                    "Prepayments": [],
                    "Overpayments": [],
                    "HasErrors": False,
                    "IsDiscounted": False,
                    "LineItems": [],
                },
                "IsDeleted": False,
            }
        )
    rec = cn["type"] == "ACCRECCREDIT"
    out = {
        "CreditNoteID": t.encode_id("CreditNotes", cn["idx"]),
        "CreditNoteNumber": cn["number"],
        "Payments": [],
        "ID": t.encode_id("CreditNotes", cn["idx"]),
        "CurrencyRate": rate(cn["rate_micro"]),
        "Type": cn["type"],
        "Reference": cn["reference"],
        "RemainingCredit": money(t.credit_remaining(cn)),
        "Allocations": allocs,
        "HasAttachments": False,
        "Contact": (
            contact_embedded(t, t.contact(cn["contact"]), CREDIT_NOTE_CONTACT_KEYS)  # type: ignore[arg-type]
            if full_contact
            else contact_summary(t, cn["contact"])
        ),
        "DateString": day_string(cn["date_day"]),
        "Date": net_date(cn["date_day"] * DAY_MS),
        "Status": cn["status"],
        "LineAmountTypes": cn["lat"],
        "LineItems": []
        if summary_only
        else _line_items(t, "CreditNotes", cn, t.sale_tax if rec else t.purchase_tax, unit_dp),
        "SubTotal": money(cn["subtotal"]),
        "TotalTax": money(cn["total_tax"]),
        "Total": money(cn["total"]),
        "UpdatedDateUTC": net_date(cn["updated_ms"]),
        "UpdatedDateUTCString": iso_seconds(cn["updated_ms"]) + "Z",
        "CurrencyCode": cn["currency"],
    }
    if cn["status"] == "PAID":
        out["FullyPaidOnDate"] = net_date(cn["date_day"] * DAY_MS)
    return out


def account(t: TenantData, a: dict) -> dict:
    out = {
        "AccountID": t.encode_id("Accounts", a["idx"]),
        "Code": a["code"],
        "Name": a["name"],
        "Status": a["status"],
        "Type": a["type"],
        "TaxType": a["tax"],
        "Class": a["class"],
        "EnablePaymentsToAccount": False,
        "ShowInExpenseClaims": False,
        "ReportingCode": a["class"][:3],
        "ReportingCodeName": a["class"].title(),
        "UpdatedDateUTC": net_date(a["updated_ms"]),
    }
    if a.get("description"):
        out["Description"] = a["description"]
    if a["bank"]:
        out.update(
            {
                "BankAccountNumber": f"0209087654321{a['idx']:03d}",
                "BankAccountType": "BANK",
                "CurrencyCode": t.base_currency,
            }
        )
    if a["code"] == "610":
        out["SystemAccount"] = "DEBTORS"
    elif a["code"] == "800":
        out["SystemAccount"] = "CREDITORS"
    return out


def organisation(t: TenantData, tier: str) -> dict:
    info = t.info
    return {
        "OrganisationID": info.tenant_id,
        "APIKey": "",
        "Name": info.tenant_name,
        "LegalName": f"{info.tenant_name} Limited",
        "PaysTax": True,
        "Version": t.country if t.country in ("NZ", "AU", "GB", "US") else "GLOBAL",
        "OrganisationType": "COMPANY",
        "BaseCurrency": t.base_currency,
        "CountryCode": t.country,
        "IsDemoCompany": False,
        "OrganisationStatus": "ACTIVE",
        "TaxNumber": t.tax_number,
        "FinancialYearEndDay": 31,
        "FinancialYearEndMonth": 3,
        "SalesTaxBasis": "INVOICE" if t.country != "US" else "NONE",
        "SalesTaxPeriod": "TWOMONTHS" if t.country == "NZ" else "QUARTERLY1",
        "DefaultSalesTax": "Tax Exclusive",
        "DefaultPurchasesTax": "Tax Exclusive",
        "PeriodLockDate": net_date(t.lock_day * DAY_MS),
        "EndOfYearLockDate": net_date(t.lock_day * DAY_MS),
        "CreatedDateUTC": net_date(info.created_ms),
        "OrganisationEntityType": "COMPANY",
        "Timezone": TIMEZONES[t.country],
        "ShortCode": info.short_code,
        "Edition": "BUSINESS",
        "Class": tier,
        "Addresses": [],
        "Phones": [],
        "ExternalLinks": [],
        "PaymentTerms": {},
    }
