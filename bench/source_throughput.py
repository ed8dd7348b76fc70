"""Benchmark: one tenant's invoices extracted and loaded into PostgreSQL (xero_source + dlt alone),
limits off, the sandbox in a process of its own (`xero-elt sandbox`), so this process is the
pipeline alone: wall time, invoices/s, calls, bytes and this process's peak RSS, per size.

    .venv/bin/python bench/source_throughput.py --invoices 10000 100000 [--repeat 3]

Each size runs in a fresh child process (so peak RSS is that size's: a warming load and the first
measured one). Before the measured load, a first pass over every page and a first load into another
dataset make the sandbox generate and keep every page the load asks for; a second pass measures
what it serves warm, so the measured load meets a sandbox that is not its bottleneck. A size of up
to 100,000 invoices is loaded --repeat times and its median shown with every run's rate.
The database: a new one on $TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped after.

Figures (2026-12-07/08, 2 cores, PostgreSQL 15, page size 1000; this machine's speed varies by 2x
within a session, so each run gives its loop time). "existing" is the same load into raw tables a
platform already has (emptied), as a new tenant's first sync meets them.
  2026-12-08: load files written without compression, in row groups of 2,000 rows that the COPY
  streams, deleted once loaded; no UNIQUE index on the raw tables' `_dlt_id`; dlt's extract
  polling its futures every ms. --repeat 5, a 10M-step loop in 0.35 s:
       10,000 invoices: median 16,365 invoices/s (14,740-16,984; existing: 16,747, 15,987-17,550);
                        peak RSS 365 MB
      100,000 invoices: median 14,262 invoices/s (12,630-16,048; existing: 14,152, 13,897-15,331);
                        peak RSS 463 MB
    1,000,000 invoices: 63.1 s = 15,856 invoices/s (existing: 14,537/s); peak RSS 524 MB (1.13x)
    Again later, loop 0.30 s: 10,000 invoices at a median of 15,424/s (14,436-15,621; existing
      15,699, 13,974-16,214); peak RSS 336 MB
    A/B in one run against the code before (children alternating, the same machine moments):
      10,000, 12 loads each: median 14,743 against 13,125/s (existing 15,901 against 13,431)
      100,000, 8 loads each: median 15,647 against 14,076/s (existing 15,558 against 13,542); peak
        RSS ~440 against ~585 MB
  The final code of the day's second session: a page typed for less (an undeclared date column
  parsed once, nested values to JSON text without a call each) and pages read one at a time.
    --repeat 5, a 10M-step loop in 0.39 s at the start (a slow moment of this machine):
       10,000 invoices: median 11,586 invoices/s (9,903-12,529; existing: 12,547, 10,015-14,121);
                        peak RSS 410 MB
      100,000 invoices: median 16,994 invoices/s (13,617-21,521; existing: 15,953, 14,802-21,394);
                        peak RSS 610 MB
    1,000,000 invoices: 64.9 s = 15,411 invoices/s (existing: 15,165/s); peak RSS 653 MB (1.07x)
    One load per size, loop 0.21 s: 10,000 in 0.7 s = 15,082/s (existing 19,218/s), again 11,003/s
      (12,696/s); 100,000 in 5.4 s = 18,630/s (16,472/s); 1,000,000 in 55.2 s = 18,104/s
      (17,661/s); peak RSS 467 / 622 / 704 MB (1.13x)
    --repeat 5, loop 0.24 s, 10,000 invoices: median 12,865/s (11,213-15,835; existing 12,992/s,
      12,642-16,338)
    Where 10,000 invoices' 0.6-0.9 s go (one chunk, nothing overlaps): ten pages read, 20-30 ms
      each; dlt's own work for a load, 0.18-0.24 s whatever its size (a load of 100 invoices);
      PostgreSQL's COPY into staging and MERGE, about 0.1 s each, one after the other.
  The day's first session's final code: chunks of 50 pages, each read while the one before
  loads, load jobs that land once when run again after a kill; ten pages to a dlt item with dlt's
  row ids on them; files of 20,000 rows; the collector's young threshold at 200,000; Arrow on
  malloc; two malloc arenas.
    A 10M-step loop in 0.28 s:
       10,000 invoices:  0.9 s = 11,385 invoices/s (existing: 11,985/s); peak RSS 449 MB
      100,000 invoices:  6.8 s = 14,697 invoices/s (existing: 16,684/s); peak RSS 633 MB
    1,000,000 invoices: 60.1 s = 16,643 invoices/s (existing: 17,143/s); peak RSS 684 MB (1.08x)
      (11 / 101 / 1001 calls, 17.5 / 175.6 / 1,758.5 MB; at 1M dlt's steps, summed over chunks
      and overlapping: extract 57.5 s, load 41.6 s; machine 80% busy)
    Again, a 10M-step loop in 0.32 s: 10,000 in 1.3 s = 7,980/s (existing: 9,662/s); 100,000 in
      6.3 s = 15,812/s (17,232/s); 1,000,000 in 65.6 s = 15,242/s (16,096/s); peak RSS 438 / 625 /
      703 MB (1.12x). 10,000 invoices is one chunk (nothing overlaps), about 1 s: ten pages read
      and typed (about 50 ms each), then one load (COPY about 0.15 s, MERGE about 0.11 s).
  The same without the two arenas (one run each, loop 0.26-0.27 s): 13,892 and 12,393 / 19,132
    and 18,288 / 18,038 and 19,117 invoices/s, peak RSS 1M/100k 839/703 and 831/689 MB (1.19x
    and 1.21x): the arenas kept what each chunk's threads freed. In one run, four 100,000 loads
    alternating two arenas and sixteen: 5.48-6.30 s against 5.86-6.22 s, peak 623-656 against
    712-745 MB.
  Before this day's last changes (loop 0.29 s), chunks read then loaded, 50 pages a chunk:
    10,000 in 1.9 s = 5,191/s; 100,000 in 10.7 s = 9,307/s; 1,000,000 in 101.1 s = 9,897/s
    (extract 57.7 s then load 42.1 s; machine 58% busy); peak RSS 484 / 652 / 730 MB.
  Earlier that day, A/B in one run, 100,000 invoices, the code before the collector threshold,
    ten pages to an item and the row ids on the pages, then after them (one chunk), twice:
    9.0 s then 6.4 s, 10.0 s then 7.5 s (1.33-1.41x)
  (earlier that day, before them, a 10M-step loop in 0.27-0.30 s: 10,678 / 11,028 / 8,479 invoices/s at
   10,000 / 100,000 / 1,000,000; dlt's normalise step took 6.4 s of the million's 117.9 s)
  (2026-12-06, before a page was typed in one pass and fetched as far ahead as Xero counts:
   6,102 invoices/s at 100,000 and 4,501 at 1,000,000; with records as dicts: 1,258-1,487)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import requests
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_cpu, python_speed  # noqa: E402

from orchestration.net import free_loopback_port  # noqa: E402
from orchestration.resources import dlt_credentials  # noqa: E402
from orchestration.settings import TELEMETRY_OFF, DatabaseUrl  # noqa: E402

CLIENT = ("sandbox-client-id", "sandbox-client-secret")  # the sandbox's public defaults
# A load of up to this many invoices lasts a second or a few, and this machine's speed changes from
# one second to the next: such a size is loaded several times and its median shown. A larger load
# lasts long enough to average those moments itself.
REPEATED_UP_TO = 100_000
REDIRECT = "http://127.0.0.1:1/callback"


def token_for(base: str) -> str:
    """The authorization-code flow over HTTP, as the OAuth service runs it (the sandbox consents)."""
    scope = "openid offline_access accounting.invoices.read"
    answer = requests.get(f"{base}/identity/connect/authorize", allow_redirects=False, timeout=30, params={
        "response_type": "code", "client_id": CLIENT[0], "redirect_uri": REDIRECT, "scope": scope,
        "state": "bench"})
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    tokens = requests.post(f"{base}/connect/token", auth=CLIENT, timeout=30, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT})
    tokens.raise_for_status()
    return tokens.json()["access_token"]


def page_through(base: str, tenant_id: str, token: str) -> tuple[int, float]:
    """Every invoice page as the extract asks for it, bodies read and not parsed: (invoices, s)."""
    session = requests.Session()
    headers = {"xero-tenant-id": tenant_id, "Authorization": f"Bearer {token}", "Accept": "application/json"}
    started, invoices, page = time.perf_counter(), 0, 1
    while True:
        body = session.get(f"{base}/api.xro/2.0/Invoices", headers=headers, timeout=120, params={
            "order": "UpdatedDateUTC ASC", "page": page, "pageSize": 1000}).content
        count = body.count(b'"InvoiceID"')
        invoices += count
        if count < 1000:
            return invoices, time.perf_counter() - started
        page += 1


def measure(invoices: int, database_url: str, repeats: int) -> dict:
    """In this (child) process: the sandbox beside it, warmed, then the load, `repeats` times."""
    import dlt

    from xero_source import SourceSettings, XeroClient, load_tenant, shared_postgres

    port = free_loopback_port()
    xero_elt = str(Path(sys.executable).with_name("xero-elt"))
    # Every page stays in the sandbox's page cache: those of a pass and those a load asks for.
    cache_mb = 64 + invoices * 4 // 1000
    sandbox = subprocess.Popen([xero_elt, "sandbox", "--port", str(port), "--tenants", "1", "--invoices",
                                str(invoices), "--seed", "7", "--no-rate-limits", "--page-cache-mb",
                                str(cache_mb)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                tenants = requests.get(f"{base}/__sandbox/tenants", timeout=5).json()
                break
            except requests.RequestException:
                if time.monotonic() > deadline or sandbox.poll() is not None:
                    raise RuntimeError("the sandbox did not start") from None
                time.sleep(0.5)
        tenant_id = tenants[0]["tenantId"]
        token = token_for(base)
        pipelines_dir = tempfile.mkdtemp(prefix="xero-elt-bench-")

        # dlt step (extract, normalize, load) -> seconds in the last load, summed over its chunks (a
        # chunk loads while the next is extracted: the steps overlap)
        steps: dict[str, float] = {}

        def timed(step: str):
            untimed = getattr(dlt.Pipeline, step)

            def run(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return untimed(*args, **kwargs)
                finally:
                    steps[step] = steps.get(step, 0.0) + time.perf_counter() - started
            return run

        for step in ("extract", "normalize", "load"):
            setattr(dlt.Pipeline, step, timed(step))

        def load(dataset: str | None = None) -> tuple[dict[str, int], XeroClient, float, str]:
            """A first load of the tenant (a pipeline with no state): into a dataset of its own,
            which it makes, or into `dataset`'s tables."""
            # Limits off on both sides: the client's own pacing (58 calls a minute, Xero's
            # per-tenant limit) would otherwise be what a 100-page tenant measures.
            client = XeroClient(tenant_id, lambda: token, SourceSettings(api_url=f"{base}/api.xro/2.0",
                                                                         minute_limit=10_000))
            name = f"bench_{uuid.uuid4().hex[:8]}"
            dataset = dataset or name
            pipeline = dlt.pipeline(pipeline_name=name, dataset_name=dataset, pipelines_dir=pipelines_dir,
                                    destination=shared_postgres(credentials=dlt_credentials(database_url)))
            steps.clear()
            started = time.perf_counter()
            rows = load_tenant(pipeline, client, resources=("invoices",))
            return rows, client, time.perf_counter() - started, dataset

        # The sandbox makes each page once and then serves it from its cache; the pages a load asks
        # for after its first chunk are filtered by that chunk's cursor (If-Modified-Since). So a
        # first pass over every page and a first load make the sandbox generate every page this
        # load asks for (and show its cold speed); a second pass shows what it serves warm, which
        # is what the measured load meets: the sandbox is not what is measured.
        _, cold = page_through(base, tenant_id, token)
        *_, warmed = load()
        served, warm = page_through(base, tenant_id, token)
        walls, existing_walls = [], []
        for _ in range(repeats):
            busy0, idle0 = machine_cpu()
            rows, client, wall, _ = load()
            busy, idle = (a - b for a, b in zip(machine_cpu(), (busy0, idle0), strict=True))
            walls.append(wall)
            step_seconds = dict(steps)
            if len(walls) == 1:  # the peak of a warming load and one measured, whatever the repeats
                peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            # A new tenant's first sync on a running platform finds the raw tables made: the same
            # load into the tables the warming load made, emptied (its dataset's tables made no
            # longer count).
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(warmed, "invoices")))
            existing_rows, _, existing_wall, _ = load(warmed)
            existing_walls.append(existing_wall)
        return {"invoices": rows.get("invoices", 0), "seconds": walls, "calls": client.calls,
                "bytes": client.bytes_received, "sandbox_cold": served / cold, "sandbox_warm": served / warm,
                "peak_rss_mb": peak_rss_mb, "steps": step_seconds, "machine_busy": busy / (busy + idle),
                "existing_invoices": existing_rows.get("invoices", 0), "existing_seconds": existing_walls}
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=60)


def rates(invoices: int, walls: list[float]) -> str:
    """Invoices/s of the median run, and every run's when there were several."""
    median = statistics.median(walls)
    text = f"{median:.1f} s = {invoices / median:,.0f} invoices/s"
    if len(walls) > 1:
        text += f" (median of {len(walls)}: " + ", ".join(f"{invoices / w:,.0f}" for w in walls) + ")"
    return text


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(measure(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help=(
        f"loads measured per size up to {REPEATED_UP_TO:,} invoices (the median is shown); a larger "
        "size loads once"))
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)  # as the platform runs dlt (its children inherit it)
    server = DatabaseUrl.parse(os.environ.get("TEST_DATABASE_URL",
                                              "postgresql://postgres@127.0.0.1:5432/postgres"))
    name = f"xero_elt_bench_source_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"this machine: {os.cpu_count()} cores, a 10M-step Python loop in {python_speed():.2f} s",
          flush=True)
    try:
        for n in args.invoices:
            repeats = max(1, args.repeat) if n <= REPEATED_UP_TO else 1
            child = [sys.executable, __file__, "--child", str(n), server.with_database(name).url,
                     str(repeats)]
            out = subprocess.run(child, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n:>9,} invoices: {rates(r['invoices'], r['seconds'])} into PostgreSQL; "
                  f"{r['calls']} calls, {r['bytes'] / 1e6:,.1f} MB; peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(the sandbox served {r['sandbox_cold']:,.0f} invoices/s cold, "
                  f"{r['sandbox_warm']:,.0f} warm); the last run: machine {r['machine_busy']:.0%} busy, "
                  "dlt's steps "
                  + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in r["steps"].items())
                  + f"\n{'':>19}into existing raw tables: "
                  f"{rates(r['existing_invoices'], r['existing_seconds'])}", flush=True)
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
