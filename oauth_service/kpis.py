"""The KPI series the coaching app reads: `analytics.kpi_monthly` (built by dbt), read as the
`xero_elt_kpi_reader` role, which may read that table and nothing else.

The KPI names are a contract with the web app; dbt_project/models/marts/_kpis.yml defines each one
(a test keeps the two lists equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection, text
from sqlalchemy.exc import ProgrammingError

from oauth_service.db import KPI_READER_ROLE

# Each KPI's unit, as the table has it (a test keeps them equal): an empty series still has one.
KPI_UNITS: dict[str, str] = {
    "revenue_invoiced": "currency", "credit_notes_issued": "currency", "revenue_net": "currency",
    "invoices_issued": "count", "average_invoice_value": "currency", "bills": "currency",
    "cash_collected": "currency", "receivables_outstanding": "currency", "receivables_current": "currency",
    "receivables_1_30": "currency", "receivables_31_60": "currency", "receivables_61_90": "currency",
    "receivables_90_plus": "currency", "overdue_amount": "currency", "overdue_count": "count",
    "dso_days": "days", "days_to_pay_avg": "days", "days_to_pay_median": "days", "active_clients": "count",
    "new_clients": "count", "returning_clients": "count", "top_client_share": "ratio",
    "top5_client_share": "ratio", "revenue_growth_mom": "ratio", "revenue_growth_yoy": "ratio",
}
KPI_NAMES: tuple[str, ...] = tuple(KPI_UNITS)
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
DEFAULT_MONTHS = 12


class KpiQueryError(ValueError):
    """A malformed month, a range backwards, or an unknown KPI: the caller's mistake (400)."""


@dataclass(frozen=True)
class KpiQuery:
    start: date  # first day of the first month
    end: date  # first day of the last month
    kpis: tuple[str, ...]

    @classmethod
    def parse(cls, start: str | None, end: str | None, kpis: list[str] | None, today: date) -> KpiQuery:
        last = _month(end, "to") if end else today.replace(day=1)
        first = _month(start, "from") if start else _add_months(last, 1 - DEFAULT_MONTHS)
        if first > last:
            raise KpiQueryError(f"from ({first:%Y-%m}) is after to ({last:%Y-%m})")
        names = tuple(dict.fromkeys(n.strip() for k in (kpis or []) for n in k.split(",") if n.strip()))
        unknown = [n for n in names if n not in KPI_NAMES]
        if unknown:
            raise KpiQueryError(f"unknown KPI {', '.join(unknown)}; known: {', '.join(KPI_NAMES)}")
        return cls(first, last, names or KPI_NAMES)


def _month(value: str, name: str) -> date:
    match = MONTH.match(value)
    if not match:
        raise KpiQueryError(f"{name} must be a month as YYYY-MM, got {value!r}")
    return date(int(match.group(1)), int(match.group(2)), 1)


def _add_months(d: date, n: int) -> date:
    y, m = divmod(d.month - 1 + n, 12)
    return date(d.year + y, m + 1, 1)


def _value(v: Decimal | None) -> str | None:
    """Exact, as the table holds it (a JSON number would go through a float)."""
    return None if v is None else format(v, "f")


class KpiTableUntrusted(RuntimeError):
    """analytics.kpi_monthly is not a plain table: reading it could run its owner's code."""


def _refuse_anything_but_a_plain_table(conn: Connection) -> None:
    """The pipeline role owns analytics. Were kpi_monthly a view, or a table under row-level
    security, reading it would run the pipeline's functions in this session, where
    `set_config('role', ...)` takes back the service login's rights (tokens, audit log). Lock the
    relation first (it cannot be swapped until the transaction ends), then read only a plain table."""
    conn.execute(text("LOCK TABLE analytics.kpi_monthly IN ACCESS SHARE MODE"))
    kind, row_security = conn.execute(text(
        "SELECT relkind, relrowsecurity FROM pg_catalog.pg_class "
        "WHERE oid = 'analytics.kpi_monthly'::pg_catalog.regclass")).one()
    if kind != "r" or row_security:
        raise KpiTableUntrusted(f"analytics.kpi_monthly is not a plain table (relkind {kind!r}, row "
                                f"security {row_security}): not read, as its owner's code would run")


def read_kpis(conn: Connection, tenant_id: str, query: KpiQuery) -> list[dict]:
    """The tenant's series, one entry per KPI asked for, each month of the range in order. Runs in
    `conn`'s transaction under the KPI reader role (SET LOCAL: the role ends with the transaction).
    Before the first analytics build there is no table yet: every series is empty."""
    conn.execute(text(f"SET LOCAL ROLE {KPI_READER_ROLE}"))
    # Names resolve in the system catalog first, then nowhere the pipeline could add to.
    conn.execute(text("SET LOCAL search_path = pg_catalog, pg_temp"))
    try:
        with conn.begin_nested():
            _refuse_anything_but_a_plain_table(conn)
            rows = conn.execute(
                text("SELECT kpi, period, value, unit, currency FROM analytics.kpi_monthly "
                     "WHERE tenant_id = :t AND period BETWEEN :a AND :b AND kpi = ANY(:k) "
                     "ORDER BY kpi, period"),
                {"t": tenant_id, "a": query.start, "b": query.end, "k": list(query.kpis)},
            ).all()
    except ProgrammingError as exc:
        if "kpi_monthly" not in str(exc) or "does not exist" not in str(exc):
            raise
        rows = []
    series: dict[str, dict] = {k: {"kpi": k, "unit": KPI_UNITS[k], "currency": None, "values": []}
                               for k in query.kpis}
    for kpi, period, value, unit, currency in rows:
        entry = series[kpi]
        entry["unit"], entry["currency"] = unit, currency
        entry["values"].append({"period": f"{period:%Y-%m}", "value": _value(value)})
    return list(series.values())
