"""Scale benchmark: one tenant with 1,000,000 invoices paged at pageSize=1000 over HTTP.

Runs the sandbox in its own process through the CLI (so its peak RSS is its own), completes the OAuth
flow, pages every invoice and prints pages/s, invoices/s, bytes and the sandbox's peak RSS.

    .venv/bin/python bench/sandbox_scale.py [--invoices 1000000] [--page-size 1000] [--max-pages N]

Figures (2 shared cores, other test suites running alongside, 2026-11-25):
    paged 1,000,000 invoices in 1,001 pages over HTTP in 101-119 s: 8.4-9.9 pages/s, 8,400-9,900 invoices/s
    bytes served: 1,833,976,887 (1.71 GiB, ~1,834 B/invoice)
    ground truth over 1,000,000 invoices: count 969,842, total 4313953606.30 (12-21 s)
    sandbox RSS: 51 MB after start; 69-83 MB while paging; peak 102 MB including truth and the payment index
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
                "scope": "offline_access accounting.invoices.read",
                "state": "bench",
            },
        )
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
        tok = s.post(
            f"{base}/connect/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb"},
            auth=(info["clientId"], "sandbox-client-secret"),
        ).json()
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
            r.raise_for_status()
            nbytes += len(r.content)
            batch = r.json()["Invoices"]
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
        truth = s.get(f"{base}/__sandbox/tenants/{tenant}/truth", params={"resource": "Invoices"}).json()
        truth_wall = time.perf_counter() - truth_t0
        # Incremental: 100 changes, then If-Modified-Since from the newest record seen.
        s.post(f"{base}/__sandbox/tenants/{tenant}/mutations", json={"action": "random", "count": 100})
        inc_t0 = time.perf_counter()
        inc = s.get(
            f"{base}/api.xro/2.0/Invoices",
            params={"page": 1, "pageSize": args.page_size},
            headers={"If-Modified-Since": max_updated.rstrip("Z")},
        ).json()
        inc_wall = time.perf_counter() - inc_t0
        pay_t0 = time.perf_counter()
        pay = s.get(f"{base}/api.xro/2.0/Payments", params={"page": 1, "pageSize": args.page_size}).json()
        pay_wall = time.perf_counter() - pay_t0
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
