"""Benchmark: the daily cycle of a fleet of tenants, against the sandbox with Xero's limits on.

Connects T tenants of N invoices each, syncs them all once (the first, full sync), changes 1% of
each tenant's invoices in the sandbox, then times the daily cycle: `sync_tenants` (what
`xero-elt sync` and the demo run: every tenant's extract, C at a time in worker processes, then
one analytics build). Prints wall time, per-tenant cost, calls, 429s, peak memory, and Dagster's
overhead per tenant (an extract run's wall time minus the time inside its asset's step).

    .venv/bin/python bench/fleet_cycle.py --tenants 100 --invoices 200 [--concurrency N [N ...]]

Figures (2026-12-07, 2 cores shared, CI's PostgreSQL 15, 200 invoices a tenant, 1% changed, the
default concurrency: 2 at a time on 2 cores):
    100 tenants: first sync 83.5 s = 0.84 s a tenant; daily cycle 74.3 s = 0.74 s a tenant, 600
      calls (one per endpoint per tenant: the floor), 0 429s; extract run 1.21 s mean, of which
      Dagster 0.19 s; analytics build 9.5 s
    1,000 tenants: first sync 884.2 s = 0.88 s a tenant, 6,006 calls, 0 429s; daily cycle 738.5 s
      = 12.3 min = 0.74 s a tenant (1.0x the 100-tenant cost), 6,000 calls (487/min of the app's
      10,000), 0 429s; extract run 1.35 s mean, of which Dagster 0.22 s; analytics build 51.4 s;
      peak RSS 1,387 MB (this process: the sandbox holds 200,000 invoices), 1,367 MB (largest
      worker or dbt)
    Before (2026-12-02, 4 at a time): 100 tenants' daily cycle 1.97 s a tenant, Dagster 1.65 s a
      run. The cost is CPU per extract run (dlt's steps, the run's events), not Xero's budget.
2026-12-07, a third machine (its 10M-step loop: 0.29 s), 1,000 tenants, 2 at a time:
    before: first sync 637.2 s = 0.64 s a tenant; daily cycle 640.8 s = 10.7 min = 0.64 s a tenant,
      extract run 1.20 s mean (Dagster 0.21 s); CPU a tenant: workers and dbt 0.83 s, PostgreSQL
      0.22 s; analytics build 28.2 s
    after dlt's capabilities were given without resolving its configuration, staging tables
      unlogged and the summary read in one query: first sync 609.4 s = 0.61 s a tenant; daily
      cycle 568.4 s = 9.5 min = 0.57 s a tenant, 6,000 calls (633/min), 0 429s, extract run 1.04 s
      mean (Dagster 0.19 s); CPU a tenant: workers and dbt 0.64 s, PostgreSQL 0.24 s; machine 80%
      busy; analytics build 41.3 s; peak RSS 1,407 MB (this process; the sandbox holds 200,000
      invoices), 1,385 MB (largest worker or dbt)
    final code (the merge by key too), loop 0.31 s: first sync 592.0 s = 0.59 s a tenant; daily
      cycle 583.9 s = 9.7 min = 0.58 s a tenant, 6,000 calls, 0 429s, extract run 1.06 s mean
      (Dagster 0.19 s); CPU a tenant: workers and dbt 0.65 s, PostgreSQL 0.25 s; analytics build
      46.8 s; peak RSS 1,333 MB (this process), 1,312 MB (largest worker or dbt)
    100 tenants, same code, loop 0.32 s: daily cycle 81.2 and 75.5 s = 0.81 and 0.76 s a tenant
      (1.3x the 1,000-tenant cost); 3 at a time against 2 (loop 0.31 s): 67.5 against 68.7 s, CPU
      a tenant 0.95 against 0.83 s: no gain, the default stays at the cores
Later on 2026-12-07, another machine, slower (its 10M-step loop: 1.36 s), 60 tenants, daily cycle:
    before dlt's SQL connections were kept: 1.27-1.40 s a tenant; CPU a tenant 1.52-1.74 s in the
      workers and dbt, 0.51-0.58 s PostgreSQL's
    after: 1.23-1.31 s a tenant; workers and dbt 1.62-1.68 s, PostgreSQL 0.34-0.41 s
    3 workers against 2 on its 2 cores: 73.2 and 80.3 s against 83.9 and 76.4 s (no clear gain)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
from bench_platform import bench_platform  # noqa: E402
from machine import machine_cpu, python_speed  # noqa: E402

from orchestration.settings import sync_concurrency  # noqa: E402
from orchestration.sync import sync_tenants  # noqa: E402


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    """Time inside the run's steps (STEP_START to STEP_SUCCESS/FAILURE): the extract itself."""
    starts, total = {}, 0.0
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            total += entry.timestamp - starts.pop(event.step_key, entry.timestamp)
    return total


def own_cpu() -> tuple[float, float]:
    """(this process: the sandbox, the OAuth service, sync's parent; its reaped children: the
    extract workers and dbt) CPU-seconds."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def cycle(label: str, sandbox, instance, concurrency: int) -> None:
    sandbox.reset_stats(limits=False)
    busy0, idle0 = machine_cpu()
    own0, children0 = own_cpu()
    started = time.perf_counter()
    results = sync_tenants(instance=instance, concurrency=concurrency)
    wall = time.perf_counter() - started
    busy, idle = (a - b for a, b in zip(machine_cpu(), (busy0, idle0), strict=True))
    own, children = (a - b for a, b in zip(own_cpu(), (own0, children0), strict=True))
    stats = sandbox.stats()
    rate_limited = sum(row["status"].get("429", 0) for row in stats["endpoints"])
    ok = sum(r.success for r in results)
    extract_runs = [r for r in results if r.run_id]
    overhead = [r.seconds - step_seconds(instance, r.run_id) for r in extract_runs]
    build = results[0].analytics_run_id if results else None
    build_stats = instance.get_run_stats(build) if build else None
    build_seconds = ((build_stats.end_time - build_stats.start_time)
                     if build_stats and build_stats.end_time else 0)
    print(f"{label}: {ok}/{len(results)} ok in {wall:.1f} s = {wall / len(results):.2f} s per tenant; "
          f"{stats['totalCalls']:,} calls ({stats['totalCalls'] / wall * 60:,.0f}/min), "
          f"{rate_limited} 429s; "
          f"extract run {statistics.mean(r.seconds for r in extract_runs):.2f} s mean, Dagster overhead "
          f"{statistics.mean(overhead):.2f} s per tenant run; analytics build {build_seconds:.1f} s",
          flush=True)
    n = len(results)
    print(f"  CPU a tenant: extract workers and dbt {children / n:.2f} s, this process (sandbox, service, "
          f"sync) {own / n:.2f} s, the rest (PostgreSQL) {(busy - own - children) / n:.2f} s; "
          f"machine {busy / (busy + idle):.0%} busy", flush=True)
    failed = [r for r in results if not r.success]
    for r in failed[:5]:
        print(f"  FAILED {r.tenant_id}: {r.error}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--invoices", type=int, default=200)
    ap.add_argument("--changed", type=float, default=0.01, help="share of each tenant's invoices changed")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[None],
                    help="tenants extracted at once (default: as `xero-elt sync`, the cores, at least 2); "
                         "several: a daily cycle for each, in that order, to compare them in one run")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    with bench_platform(tenants=args.tenants, invoices=args.invoices, seed=args.seed) as (sandbox, instance):
        concurrencies = [sync_concurrency(c) for c in args.concurrency]
        print(f"{args.tenants} tenants x {args.invoices} invoices, Xero's limits on; this machine: "
              f"{os.cpu_count()} cores, a 10M-step Python loop in {python_speed():.2f} s", flush=True)
        cycle(f"first sync (full), {concurrencies[0]} at a time", sandbox, instance, concurrencies[0])
        changed = max(1, round(args.invoices * args.changed))
        for round_, concurrency in enumerate(concurrencies):
            for t in sandbox.tenants:
                sandbox.mutate(t.tenant_id, "random", count=changed, seed=7 + round_)
            cycle(f"daily cycle ({changed} invoice(s) changed per tenant), {concurrency} at a time",
                  sandbox, instance, concurrency)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: this process (sandbox, service, sync) {own:.0f} MB; "
          f"largest worker or dbt {children:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
