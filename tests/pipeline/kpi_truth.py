"""The coaching KPIs computed independently, in Python, from the sandbox's own records (never
from the models' tables): what analytics.kpi_monthly must hold, to the cent."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

COUNTS = ("invoices_issued", "overdue_count", "active_clients", "new_clients", "returning_clients")


def _day(value: str | None) -> date | None:
    match = re.match(r"/Date\((-?\d+)", value or "")
    return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC).date() if match else None


def _month(d: date) -> date:
    return d.replace(day=1)


def _add_months(d: date, n: int) -> date:
    y, m = divmod(d.month - 1 + n, 12)
    return date(d.year + y, m + 1, 1)


def _round(value: Decimal | None, places: int) -> Decimal | None:
    return None if value is None else value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)


def _dec(value) -> Decimal:
    return Decimal(str(value))


def expected_kpis(sandbox, tenant_id: str, today: date) -> dict[tuple[date, str], Decimal | None]:
    """{(period, kpi): value} for one tenant."""
    with localcontext() as ctx:
        ctx.prec = 40
        return _expected(sandbox, tenant_id, today)


def _expected(sandbox, tenant_id: str, today: date) -> dict[tuple[date, str], Decimal | None]:
    base = sandbox.sandbox.tenant(tenant_id).base_currency
    invoices = list(sandbox.records(tenant_id, "Invoices", include_deleted=True))
    docs = [i for i in invoices
            if i["Status"] in ("AUTHORISED", "PAID") and i["Type"] in ("ACCREC", "ACCPAY")]

    def to_base(amount, doc) -> Decimal:  # divided by the document's own rate (invoice or credit note)
        return _dec(amount) if doc["CurrencyCode"] == base else _dec(amount) / _dec(doc["CurrencyRate"])

    sales = [d for d in docs if d["Type"] == "ACCREC"]
    bills = [d for d in docs if d["Type"] == "ACCPAY"]
    by_id = {d["InvoiceID"]: d for d in sales}
    credits = [c for c in sandbox.records(tenant_id, "CreditNotes", include_deleted=True)
               if c["Status"] in ("AUTHORISED", "PAID") and c["Type"] == "ACCRECCREDIT"]
    payments = [p for p in sandbox.records(tenant_id, "Payments", include_deleted=True)
                if p["Status"] == "AUTHORISED" and (p.get("Invoice") or {}).get("InvoiceID") in by_id]

    settlements: dict[str, list[tuple[date, Decimal]]] = defaultdict(list)
    for p in payments:
        settlements[p["Invoice"]["InvoiceID"]].append((_day(p["Date"]), _dec(p["Amount"])))
    for c in credits:
        for a in c.get("Allocations") or []:
            settlements[a["Invoice"]["InvoiceID"]].append((_day(a["Date"]), _dec(a["Amount"])))

    def date_of(doc) -> date:
        return _day(doc["Date"])

    first = min([_month(date_of(d)) for d in docs] + [_month(_day(c["Date"])) for c in credits])
    periods = []
    p = first
    while p <= _month(today):
        periods.append(p)
        p = _add_months(p, 1)

    first_sale: dict[str, date] = {}
    for d in sales:
        cid = d["Contact"]["ContactID"]
        first_sale[cid] = min(first_sale.get(cid, date.max), _month(date_of(d)))

    def net_of(period: date) -> Decimal:
        total = sum((to_base(d["SubTotal"], d) for d in sales if _month(date_of(d)) == period), Decimal(0))
        credit = sum((to_base(c["SubTotal"], c) for c in credits if _month(_day(c["Date"])) == period),
                     Decimal(0))
        return _round(total, 2) - _round(credit, 2)  # revenue_invoiced - credit_notes_issued, as defined

    out: dict[tuple[date, str], Decimal | None] = {}
    for period in periods:
        end = _add_months(period, 1) - timedelta(days=1)
        as_of = min(end, today)
        in_month = [d for d in sales if _month(date_of(d)) == period]
        revenue = sum((to_base(d["SubTotal"], d) for d in in_month), Decimal(0))
        credit = sum((to_base(c["SubTotal"], c) for c in credits if _month(_day(c["Date"])) == period),
                     Decimal(0))
        bills_sum = sum((to_base(d["SubTotal"], d) for d in bills if _month(date_of(d)) == period),
                        Decimal(0))
        cash = Decimal(0)
        for pay in payments:
            if _month(_day(pay["Date"])) == period:
                inv = by_id[pay["Invoice"]["InvoiceID"]]
                rate = Decimal(1) if inv["CurrencyCode"] == base else _dec(pay["CurrencyRate"])
                cash += _dec(pay["Amount"]) / rate
        buckets = defaultdict(Decimal)
        overdue_count = 0
        for d in sales:
            if date_of(d) > as_of:
                continue
            settled = sum((a for when, a in settlements[d["InvoiceID"]] if when <= as_of), Decimal(0))
            outstanding = _dec(d["Total"]) - settled
            value = to_base(outstanding, d)
            due = _day(d.get("DueDate"))
            late = (as_of - due).days if due else 0
            buckets["receivables_outstanding"] += value
            bucket = ("receivables_current" if late <= 0 else "receivables_1_30" if late <= 30
                      else "receivables_31_60" if late <= 60 else "receivables_61_90" if late <= 90
                      else "receivables_90_plus")
            buckets[bucket] += value
            if late > 0:
                buckets["overdue_amount"] += value
                overdue_count += outstanding != 0
        sales_90 = sum((to_base(d["Total"], d) for d in sales
                        if as_of - timedelta(days=90) < date_of(d) <= as_of), Decimal(0))
        paid = [(_day(d["FullyPaidOnDate"]) - date_of(d)).days for d in sales
                if d.get("FullyPaidOnDate") and _month(_day(d["FullyPaidOnDate"])) == period]
        active = {d["Contact"]["ContactID"] for d in in_month}
        new = {c for c in active if first_sale[c] == period}
        window = [d for d in sales if _add_months(period, -11) <= date_of(d) < _add_months(period, 1)]
        per_client: dict[str, Decimal] = defaultdict(Decimal)
        for d in window:
            per_client[d["Contact"]["ContactID"]] += to_base(d["SubTotal"], d)
        ranked = sorted(per_client.values(), reverse=True)
        total_12m = sum(ranked, Decimal(0))
        net = net_of(period)
        prev = net_of(_add_months(period, -1))
        last_year = net_of(_add_months(period, -12))

        def growth(that: Decimal, this: Decimal = net) -> Decimal | None:
            return None if not that else _round((this - that) / that, 6)

        values: dict[str, Decimal | None] = {
            "revenue_invoiced": _round(revenue, 2),
            "credit_notes_issued": _round(credit, 2),
            "revenue_net": net,
            "invoices_issued": Decimal(len(in_month)),
            "average_invoice_value": _round(_round(revenue, 2) / len(in_month), 2) if in_month else None,
            "bills": _round(bills_sum, 2),
            "cash_collected": _round(cash, 2),
            **{k: _round(buckets[k], 2) for k in (
                "receivables_outstanding", "receivables_current", "receivables_1_30", "receivables_31_60",
                "receivables_61_90", "receivables_90_plus", "overdue_amount")},
            "overdue_count": Decimal(overdue_count),
            "dso_days": _round(buckets["receivables_outstanding"] / sales_90 * 90, 2) if sales_90 else None,
            "days_to_pay_avg": _round(Decimal(sum(paid)) / len(paid), 2) if paid else None,
            "days_to_pay_median": _round(_dec(statistics.median(paid)), 2) if paid else None,
            "active_clients": Decimal(len(active)),
            "new_clients": Decimal(len(new)),
            "returning_clients": Decimal(len(active - new)),
            "top_client_share": _round(ranked[0] / total_12m, 6) if total_12m else None,
            "top5_client_share": _round(sum(ranked[:5], Decimal(0)) / total_12m, 6) if total_12m else None,
            "revenue_growth_mom": growth(prev),
            "revenue_growth_yoy": growth(last_year),
        }
        for kpi, value in values.items():
            out[(period, kpi)] = value
    return out
