"""Benchmark: the extract's pace against Xero's limits, on the sandbox with its limits on (real clock).

1. One tenant that needs more than a minute's calls (--calls, default 150: 10 invoices a page):
   the calls per minute it sustains, as a fraction of Xero's 60, and the 429s it met.
2. --tenants tenants (default 10) at once, each with its own client and its own PostgreSQL app
   budget (as separate workers would have): the total wall time against one tenant's alone.

    .venv/bin/python bench/source_pacing.py [--calls 150 --tenants 10]

The app budget's table lives in a database of its own on $TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end.

Figures (2026-12-07, 2 cores, PostgreSQL 15, defaults; pages read as the source reads them):
    one tenant: 1,490 invoices, 150 calls in 120.6 s; busiest rolling minute 58 calls (0.967 of 60),
      mean over whole minutes 58.0 (0.967 of 60); 429s met: 0
    10 tenants at once: 14,900 invoices, 1,500 calls in 142.4 s (1.18x one tenant's); 429s met: 0
Figures (2026-12-06, 2 cores shared with the test suite, PostgreSQL 15, defaults):
    one tenant: 1,490 invoices, 150 calls in 120.6 s; busiest rolling minute 58 calls (0.967 of 60),
      mean over whole minutes 58.0 (0.967 of 60); 429s met: 0
    10 tenants at once: 14,900 invoices, 1,500 calls in 142.9 s (1.19x one tenant's); 429s met: 0
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestration.settings import DatabaseUrl  # noqa: E402
from orchestration.xero_budget import PostgresAppBudget  # noqa: E402
from xero_sandbox import SandboxConfig, SandboxServer  # noqa: E402
from xero_sandbox.pytest_plugin import TimedSession, sandbox_token  # noqa: E402
from xero_source import ENDPOINTS, SourceSettings, XeroClient  # noqa: E402
from xero_source.pages import PageSpec, read_page  # noqa: E402

PAGE = 10


def extract(sb: SandboxServer, tenant_index: int, token: str, budget: PostgresAppBudget | None) -> tuple:
    settings = SourceSettings(api_url=f"{sb.url}/api.xro/2.0", page_size=PAGE)
    client = XeroClient(sb.tenants[tenant_index].tenant_id, lambda: token, settings, session=TimedSession(),
                        app_budget=budget)
    spec = PageSpec("Invoices", client.tenant_id, "InvoiceID", True, ENDPOINTS["invoices"].columns)
    started = time.monotonic()
    records = sum(page.count for page in client.paged("Invoices", functools.partial(read_page, spec=spec)))
    return records, client.session.sent, client.stats["Invoices"].rate_limited, time.monotonic() - started


def per_minute(sent: list[float]) -> tuple[int, float]:
    """(the busiest rolling minute's calls, the mean calls per minute over the whole minutes after
    the first call)."""
    busiest = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    whole = int((sent[-1] - sent[0]) // 60)
    mean = sum(1 for t in sent if t < sent[0] + whole * 60) / whole if whole else float("nan")
    return busiest, mean


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()
    invoices = (args.calls - 1) * PAGE
    server = DatabaseUrl.parse(os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    name = f"xero_elt_bench_pacing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = server.with_database(name).url
    try:
        config = SandboxConfig(seed=12, tenants=args.tenants, invoices_per_tenant=invoices)
        with SandboxServer(config, port=0) as sb:
            token = sandbox_token(sb)["access_token"]
            records, sent, limited, seconds = extract(sb, 0, token, None)
            busiest, mean = per_minute(sent)
            print(f"one tenant: {records:,} invoices, {len(sent)} calls in {seconds:.1f} s; busiest rolling "
                  f"minute {busiest} calls ({busiest / 60:.3f} of 60), mean over whole minutes {mean:.1f} "
                  f"({mean / 60:.3f} of 60); 429s met: {limited}")
            single = seconds

        with SandboxServer(config, port=0) as sb:
            token = sandbox_token(sb)["access_token"]
            budgets = [PostgresAppBudget(database_url, 10_000) for _ in range(args.tenants)]
            results: list[tuple] = [()] * args.tenants

            def run(i: int) -> None:
                results[i] = extract(sb, i, token, budgets[i])

            started = time.monotonic()
            threads = [threading.Thread(target=run, args=(i,)) for i in range(args.tenants)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
            for budget in budgets:
                budget.close()
            total_calls = sum(len(r[1]) for r in results)
            print(f"{args.tenants} tenants at once: {sum(r[0] for r in results):,} invoices, "
                  f"{total_calls} calls in {wall:.1f} s ({wall / single:.2f}x one tenant's {single:.1f} s); "
                  f"429s met: {sum(r[2] for r in results)}")
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
