"""Scale benchmark: one tenant with 1,000,000 invoices paged at pageSize=1000 over HTTP.

Runs the sandbox in its own process through the CLI (so its peak RSS is its own), completes the OAuth
flow, pages every invoice and prints pages/s, invoices/s, bytes and the sandbox's peak RSS.

    .venv/bin/python bench/sandbox_scale.py [--invoices 1000000] [--page-size 1000] [--max-pages N]

Figures (2 shared cores, other test suites running alongside, two runs):
    paged 1,000,000 invoices in 1,001 pages over HTTP in 100-117 s: 8.5-10.0 pages/s, 8,500-10,000 invoices/s
    bytes served: 1,758,144,279 (1.64 GiB, ~1,758 B/invoice)
    ground truth over 1,000,000 invoices: count 969,842, total 4291549358.70 (14-16 s)
    incremental after 100 changes: 101 invoices in one call (7-16 ms); Payments page 1 in 1.0-1.3 s
    Contacts page 1 with exact Balances (first use scans the invoices): 3.5-4.3 s
    sandbox RSS: 53 MB after start; 81-88 MB while paging; peak 106-114 MB including truth, the payment
    index and the contacts' balances (limit 300 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import psutil
import requests

from xero_sandbox.config import GRANULAR_READ_SCOPE


def ok(r: requests.Response, what: str) -> dict:
    """The JSON of a 200 answer; anything else stops the benchmark with what the sandbox said."""
    if r.status_code != 200:
        raise SystemExit(f"{what}: HTTP {r.status_code} {r.reason}: {r.text[:300]}")
    return r.json()


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--invoices", type=int, default=1_000_000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-pages", type=int, default=0, help="stop after this many pages (0 = all)")
    args = ap.parse_args()

    cmd = [
        sys.executable,
        "-m",
        "xero_sandbox",
        "--port",
        "0",
        "--tenants",
        "1",
        "--invoices",
        str(args.invoices),
        "--seed",
        str(args.seed),
        "--no-rate-limits",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        base, tenant = info["url"], info["tenants"][0]["tenantId"]
        rss_start = peak_rss_mb(proc.pid)
        sampled: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            p = psutil.Process(proc.pid)
            while not stop.wait(0.2):
                sampled.append(p.memory_info().rss / 2**20)

        threading.Thread(target=sample, daemon=True).start()

        s = requests.Session()
        r = s.get(
            f"{base}/identity/connect/authorize",
            allow_redirects=False,
            params={
                "response_type": "code",
                "client_id": info["clientId"],
                "redirect_uri": "http://127.0.0.1/cb",
                "scope": GRANULAR_READ_SCOPE,  # invoices, payments, contacts, settings
                "state": "bench",
            },
        )
        query = parse_qs(urlsplit(r.headers.get("Location", "")).query)
        if "code" not in query:
            raise SystemExit(f"authorize: HTTP {r.status_code}, no code: {r.headers.get('Location')}")
        tok = ok(
            s.post(
                f"{base}/connect/token",
                data={"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": "http://127.0.0.1/cb"},
                auth=(info["clientId"], "sandbox-client-secret"),
            ),
            "token",
        )
        s.headers.update(
            {
                "Authorization": f"Bearer {tok['access_token']}",
                "xero-tenant-id": tenant,
                "Accept": "application/json",
            }
        )

        pages = items = nbytes = 0
        max_updated = ""
        t0 = time.perf_counter()
        page = 1
        while True:
            r = s.get(f"{base}/api.xro/2.0/Invoices", params={"page": page, "pageSize": args.page_size})
            batch = ok(r, f"Invoices page {page}")["Invoices"]
            nbytes += len(r.content)
            if batch:
                max_updated = max(max_updated, batch[-1]["UpdatedDateUTCString"])
            pages += 1
            items += len(batch)
            if page % 100 == 0:
                el = time.perf_counter() - t0
                print(
                    f"  page {page}: {items} invoices, {pages / el:.1f} pages/s, "
                    f"RSS {peak_rss_mb(proc.pid):.0f} MB",
                    flush=True,
                )
            if len(batch) < args.page_size or (args.max_pages and pages >= args.max_pages):
                break
            page += 1
        wall = time.perf_counter() - t0
        stop.set()
        truth_t0 = time.perf_counter()
        truth = ok(
            s.get(f"{base}/__sandbox/tenants/{tenant}/truth", params={"resource": "Invoices"}), "truth"
        )
        truth_wall = time.perf_counter() - truth_t0
        # Incremental: 100 changes, then If-Modified-Since from the newest record seen.
        ok(
            s.post(f"{base}/__sandbox/tenants/{tenant}/mutations", json={"action": "random", "count": 100}),
            "mutations",
        )
        inc_t0 = time.perf_counter()
        inc = ok(
            s.get(
                f"{base}/api.xro/2.0/Invoices",
                params={"page": 1, "pageSize": args.page_size},
                headers={"If-Modified-Since": max_updated.rstrip("Z")},
            ),
            "incremental Invoices",
        )
        inc_wall = time.perf_counter() - inc_t0
        pay_t0 = time.perf_counter()
        pay = ok(
            s.get(f"{base}/api.xro/2.0/Payments", params={"page": 1, "pageSize": args.page_size}), "Payments"
        )
        pay_wall = time.perf_counter() - pay_t0
        con_t0 = time.perf_counter()
        contacts = ok(
            s.get(f"{base}/api.xro/2.0/Contacts", params={"page": 1, "pageSize": args.page_size}), "Contacts"
        )["Contacts"]
        con_wall = time.perf_counter() - con_t0
        ar_outstanding = sum(c["Balances"]["AccountsReceivable"]["Outstanding"] for c in contacts)
        peak = peak_rss_mb(proc.pid)
        print(f"invoices per tenant: {args.invoices:,}; page size {args.page_size}")
        print(
            f"paged {items:,} invoices in {pages:,} pages over HTTP in {wall:.1f} s: "
            f"{pages / wall:.1f} pages/s, {items / wall:,.0f} invoices/s"
        )
        print(f"bytes served: {nbytes:,} ({nbytes / 2**30:.2f} GiB, {nbytes / max(items, 1):,.0f} B/invoice)")
        print(
            f"ground truth: count {truth['count']:,}, total {truth['total']} (computed in {truth_wall:.1f} s)"
        )
        print(
            f"incremental after 100 changes: {inc['pagination']['itemCount']} invoices in one call "
            f"({inc_wall * 1000:.0f} ms); Payments page 1 of {pay['pagination']['pageCount']} "
            f"(first use builds the payment index) in {pay_wall:.1f} s"
        )
        print(
            f"Contacts page 1 ({len(contacts)} contacts, AR outstanding {ar_outstanding:,.2f}) in "
            f"{con_wall:.1f} s (first use scans the invoices for the contacts' Balances)"
        )
        print(
            f"sandbox RSS: {rss_start:.0f} MB after start; peak {peak:.0f} MB "
            f"(sampled max while paging {max(sampled, default=0):.0f} MB); limit 300 MB -> "
            f"{'OK' if peak < 300 else 'OVER'}"
        )
        return 0 if peak < 300 else 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
