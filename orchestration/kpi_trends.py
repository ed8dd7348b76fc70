"""A glance at each tenant's trend, for the KPI asset's materialisation in the Dagster UI: revenue
net, cash collected and receivables over the last 12 months, as a small chart (a sparkline) per
tenant and KPI, with the latest month's figure."""

from __future__ import annotations

from decimal import Decimal

import psycopg

TREND_KPIS = ("revenue_net", "cash_collected", "receivables_outstanding")
BARS = "▁▂▃▄▅▆▇█"
MAX_TENANTS = 50  # a table a person can read; the KPI table itself has every tenant


def sparkline(values: list[Decimal]) -> str:
    low, high = min(values), max(values)
    if high == low:
        return BARS[0] * len(values)
    return "".join(BARS[int((v - low) / (high - low) * (len(BARS) - 1))] for v in values)


def kpi_trends_markdown(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT k.tenant_id, coalesce(c.tenant_name, k.tenant_id), k.kpi, k.period, k.value, k.currency "
            "FROM analytics.kpi_monthly k LEFT JOIN app.xero_connections c ON c.tenant_id = k.tenant_id "
            "WHERE k.kpi = ANY(%s) AND k.period > date_trunc('month', now() AT TIME ZONE 'UTC') - interval "
            "'12 months' ORDER BY 2, 1, k.kpi, k.period", (list(TREND_KPIS),)).fetchall()
    series: dict[tuple[str, str], dict[str, list]] = {}
    for tenant_id, name, kpi, _period, value, currency in rows:
        entry = series.setdefault((name, tenant_id), {"currency": currency})
        entry.setdefault(kpi, []).append(value or Decimal(0))
    lines = ["| tenant | " + " | ".join(k.replace("_", " ") for k in TREND_KPIS) + " |",
             "| --- |" + " --- |" * len(TREND_KPIS)]
    for (name, _tenant_id), entry in list(series.items())[:MAX_TENANTS]:
        cells = [f"`{sparkline(entry[k])}` {entry[k][-1]:,} {entry['currency'] or ''}".strip()
                 if entry.get(k) else "" for k in TREND_KPIS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(series) > MAX_TENANTS:
        lines.append(f"\n{len(series) - MAX_TENANTS} more tenants: see analytics.kpi_monthly.")
    return "Last 12 months, in each organisation's base currency.\n\n" + "\n".join(lines)
