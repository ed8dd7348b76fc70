"""The sandbox's ground truth for the analytics tables, field by field."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import psycopg

# The seed's columns, then the extra ones: what analytics.invoices holds for a Xero invoice.
SEED_COLUMNS = ("id", "xero_invoice_id", "xero_connection_id", "invoice_number", "client_name", "amount",
                "tax_amount", "invoice_date", "due_date", "paid_date", "status", "line_items")
EXTRA_COLUMNS = ("tenant_id", "invoice_type", "contact_id", "reference", "currency_code", "currency_rate",
                 "sub_total", "amount_due", "amount_paid", "amount_credited", "base_currency",
                 "currency_rate_missing", "amount_base", "tax_amount_base", "sub_total_base",
                 "amount_due_base", "amount_paid_base", "amount_credited_base", "xero_updated_date_utc")
INVOICE_COLUMNS = SEED_COLUMNS + EXTRA_COLUMNS
CENT = Decimal("0.01")


def canonical_id(tenant_id: str, invoice_id: str) -> str:
    return str(uuid.UUID(hashlib.md5(f"{tenant_id}:{invoice_id}".encode()).hexdigest()))  # noqa: S324


def net_date(value: str | None) -> datetime | None:
    """Xero's /Date(1700000000000+0000)/ as a naive UTC datetime."""
    match = re.match(r"/Date\((-?\d+)", value or "")
    if match is None:
        return None
    return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC).replace(tzinfo=None)


def _json(value) -> str:
    """JSON compared by value: a number as its decimal value (8.0 == 8), keys sorted; a number sent
    as a string ("8.0") stays a string, unequal to Xero's number."""
    def mark(v):
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
            return {"number": format(Decimal(str(v)).normalize(), "f")}
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    return json.dumps(mark(value), sort_keys=True)


def base_currency(sandbox, tenant_id: str) -> str:
    return sandbox.sandbox.tenant(tenant_id).base_currency


def expected_invoice(record: dict, tenant_id: str, connection_id: str, base: str) -> dict:
    def amount(key: str) -> Decimal:
        return Decimal(str(record.get(key, 0)))

    rate = Decimal(str(record["CurrencyRate"])) if record.get("CurrencyRate") is not None else None
    foreign = record["CurrencyCode"] != base

    def to_base(key: str) -> Decimal | None:
        if not foreign:
            return amount(key)
        return (amount(key) / rate).quantize(CENT, ROUND_HALF_UP) if rate else None

    paid = net_date(record.get("FullyPaidOnDate"))
    return {
        "id": canonical_id(tenant_id, record["InvoiceID"]),
        "xero_invoice_id": record["InvoiceID"],
        "xero_connection_id": connection_id,
        "invoice_number": record.get("InvoiceNumber"),
        "client_name": record["Contact"]["Name"],
        "amount": amount("Total"),
        "tax_amount": amount("TotalTax"),
        "invoice_date": date.fromisoformat(record["DateString"][:10]),
        "due_date": date.fromisoformat(record["DueDateString"][:10]) if record.get("DueDateString") else None,
        "paid_date": paid.date() if paid else None,
        "status": record["Status"],
        "line_items": record.get("LineItems", []),
        "tenant_id": tenant_id,
        "invoice_type": record["Type"],
        "contact_id": record["Contact"]["ContactID"],
        "reference": record.get("Reference"),
        "currency_code": record["CurrencyCode"],
        "currency_rate": rate,
        "sub_total": amount("SubTotal"),
        "amount_due": amount("AmountDue"),
        "amount_paid": amount("AmountPaid"),
        "amount_credited": amount("AmountCredited"),
        "base_currency": base,
        "currency_rate_missing": bool(foreign and not rate),
        "amount_base": to_base("Total"),
        "tax_amount_base": to_base("TotalTax"),
        "sub_total_base": to_base("SubTotal"),
        "amount_due_base": to_base("AmountDue"),
        "amount_paid_base": to_base("AmountPaid"),
        "amount_credited_base": to_base("AmountCredited"),
        "xero_updated_date_utc": net_date(record["UpdatedDateUTC"]),
    }


def _normalise(column: str, value):
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if column == "line_items":
        return _json(value)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def invoice_differences(database_url: str, sandbox, tenant_ids: list[str]) -> list[str]:
    """Every difference between analytics.invoices and the sandbox's invoices (DELETED included),
    column by column; empty when they are equal."""
    problems = []
    with psycopg.connect(database_url) as conn:
        connections = dict(conn.execute("SELECT tenant_id, id::text FROM app.xero_connections").fetchall())
        for tenant_id in tenant_ids:
            cur = conn.execute(
                f"SELECT {', '.join(INVOICE_COLUMNS)} FROM analytics.invoices "  # noqa: S608
                "WHERE tenant_id = %s", (tenant_id,))
            got = {r[1]: dict(zip(INVOICE_COLUMNS, r, strict=True)) for r in cur.fetchall()}
            base = base_currency(sandbox, tenant_id)
            want = {r["InvoiceID"]: expected_invoice(r, tenant_id, connections.get(tenant_id), base)
                    for r in sandbox.records(tenant_id, "Invoices", include_deleted=True)}
            for missing in sorted(want.keys() - got.keys()):
                problems.append(f"tenant {tenant_id} invoice {missing} ({want[missing]['status']}): missing")
            for extra in sorted(got.keys() - want.keys()):
                problems.append(f"tenant {tenant_id} invoice {extra}: not in Xero")
            for invoice_id in sorted(want.keys() & got.keys()):
                for column in INVOICE_COLUMNS:
                    ours = _normalise(column, got[invoice_id][column])
                    xero = _normalise(column, want[invoice_id][column])
                    if ours != xero:
                        problems.append(f"tenant {tenant_id} invoice {invoice_id} {column}: "
                                        f"ours {ours!r}, Xero's {xero!r}")
    return problems


def assert_invoices_equal_truth(platform) -> None:
    problems = invoice_differences(platform.database_url, platform.sandbox, platform.tenant_ids)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:40])
