"""Benchmark: what one daily cycle costs per tenant (measured), and for a fleet (computed from it).

1. MEASURES, on the sandbox over real HTTP (Xero's limits on) into a fresh PostgreSQL database,
   through `sync_tenants` (the code path of `xero-elt sync`: each tenant's extract a Dagster run in
   a worker process, --concurrency at a time, then one set-based analytics build):
     - the first, full sync of --tenants tenants of --invoices invoices each;
     - a daily sync after a realistic day's change (--changed of each tenant's invoices touched by
       the sandbox's `random` mutation: new invoices, payments, edits, voids, deletes).
   Per tenant and cycle: Xero calls and response bytes (the sandbox's count, checked against what
   each run's materialisations recorded as xero/calls and xero/bytes), rows loaded and the extract
   run's wall time (run_audit.run_figures: what app.audit_log records). Per cycle: the extract
   workers' CPU (their rusage once reaped), one worker's start-up CPU (spawn + definitions, paid by
   every ECS run task), the build's wall and CPU (this process + dbt), and PostgreSQL's CPU (the
   backends on the bench's two databases, sampled from /proc: a lower bound, a backend that lives
   less than a sample interval is missed; "n/a" when the server is not on this machine).
2. COMPUTES one daily cycle for --fleet tenants (default 1,000 and 10,000): calls against Xero's
   5,000/day per tenant and the app-wide minute limit (the least wall time it allows), egress,
   CPU, the cycle's wall time on this machine and on --ecs-tasks concurrent ECS run tasks, and a
   rough Fargate and NAT cost from price flags (defaults: ap-southeast-2, Linux/x86, on-demand, as
   known in 2025; assumptions, check the AWS price list).
3. PRINTS the measured per-tenant table, the projection and every assumption it rests on.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        nice -n 10 .venv/bin/python bench/fleet_cost.py [--tenants 8 --invoices 500 --changed 0.03]

The database (and Dagster's) is created on TEST_DATABASE_URL's server, else the embedded one, and
dropped at the end (bench_platform). A default run takes about 2-3 minutes on 2 cores.

Figures (2026-12-06, 2 cores shared with the test suite (load 5-8), PostgreSQL 15, defaults):
    per tenant: 6 calls on both cycles (one per endpoint); 1.4 MB and 1,033 rows full, 38 kB and
      38 rows daily; 1.2-1.4 CPU-s per extract + 4.0-4.4 CPU-s of worker start-up; build 7 CPU-s
      + 0.3 CPU-s per 1,000 rows; PostgreSQL CPU negligible at this size
    10,000 tenants a day: 60,000 calls (6 min at the app limit), 2.3 GB egress, ~15 CPU-hours
      (2/3 of it run-task start-up); ~1 h on 166 ECS run tasks, ~$360 per 30 days of Fargate
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
import psycopg  # noqa: E402
from bench_platform import bench_platform  # noqa: E402

from orchestration import sync  # noqa: E402
from orchestration.run_audit import run_figures  # noqa: E402
from orchestration.sensors import analytics_after_extracts  # noqa: E402
from orchestration.settings import (  # noqa: E402
    XERO_APP_CALLS_PER_MINUTE,
    XERO_TENANT_CALLS_PER_MINUTE,
    DatabaseUrl,
)

XERO_DAY_LIMIT = 5_000  # calls per tenant per day (Xero)
DEFAULT_DAY_RESERVE = 250  # XERO_DAY_RESERVE: left to the web app
DAYS_PER_MONTH = 30
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting -----------------------------------------------------------------------------------

class PostgresCpu(threading.Thread):
    """CPU of the PostgreSQL backends serving the given databases, summed over time.

    Backends are processes of the server, not ours, so rusage cannot see them; their titles name the
    database ("postgres: 15/main: user dbname 127.0.0.1(port) idle"). Sampled every `interval`
    seconds from /proc: a backend that starts and ends between two samples is missed.
    """

    def __init__(self, databases: set[str], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="postgres-cpu")
        self.databases, self.interval = databases, interval
        self.seconds = 0.0  # accumulated since the first sample
        self.own_cpu = 0.0  # this thread's CPU, to leave out of this process's figures
        self.seen_backends = 0
        self._last: dict[int, float] = {}
        self._halt = threading.Event()  # not _stop: Thread has one
        self._lock = threading.Lock()

    def _backends(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace")
                if not title.startswith("postgres: "):
                    continue
                words = title.split()
                ours = any(w in self.databases for w in words[1:5])
                if not ours and "parallel worker for PID" in title:
                    ours = int(words[-1]) in self._last or int(words[-1]) in found
                if not ours:
                    continue
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime + stime
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not readable
        return found

    def sample(self, first: bool = False) -> None:
        started = time.thread_time()
        now = self._backends()
        with self._lock:
            if not first:
                for pid, cpu in now.items():
                    before = self._last.get(pid, 0.0)
                    self.seconds += cpu - before if cpu >= before else cpu  # a reused pid starts again
            self.seen_backends += len(now.keys() - self._last.keys())
            self._last = now
        self.own_cpu += time.thread_time() - started

    def run(self) -> None:
        self.sample(first=True)  # backends already open count from here, not from their start
        while not self._halt.wait(self.interval):
            self.sample()

    def total(self) -> float:
        self.sample()  # up to date at a phase boundary
        with self._lock:
            return self.seconds

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Usage:
    """A CPU snapshot: this process (minus the sampler's thread), reaped children, PostgreSQL."""

    wall: float
    own: float
    children: float
    database: float

    @classmethod
    def now(cls, db: PostgresCpu) -> Usage:
        database = db.total()
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.perf_counter(), me.ru_utime + me.ru_stime - db.own_cpu,
                   kids.ru_utime + kids.ru_stime, database)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.wall - other.wall, self.own - other.own, self.children - other.children,
                     self.database - other.database)


def worker_startup_cpu(instance: dg.DagsterInstance) -> float:
    """CPU of starting one extract worker exactly as sync_tenants does (spawn, import the
    definitions, resolve the job): what every ECS run task pays again before its extract."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=sync._worker_start,
                             initargs=(os.getpid(), instance.get_ref(), "WARNING")) as pool:
        pool.submit(os.getpid).result()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker is reaped at shutdown
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# -- one measured cycle ---------------------------------------------------------------------------------

@dataclass
class TenantRun:
    tenant_id: str
    calls: int  # as the sandbox (Xero) served them
    bytes: int  # response bodies the sandbox sent
    recorded_calls: int  # as the run's materialisations recorded them (xero/calls)
    recorded_bytes: int  # xero/bytes
    rows: int  # rows loaded into raw_xero
    seconds: float  # the extract run's wall time


@dataclass
class Cycle:
    label: str
    runs: list[TenantRun]
    extract: Usage  # the extract phase: every worker's start-up and extracts
    build: Usage  # the analytics build
    workers: int  # extract worker processes started
    startup_cpu: float = 0.0  # filled in once measured
    rate_limited: int = 0
    peak_child_rss_mb: float = 0.0

    def mean(self, attr: str) -> float:
        return statistics.mean(getattr(r, attr) for r in self.runs)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.runs)

    @property
    def extract_cpu_per_tenant(self) -> float:
        """Worker CPU per extract, the workers' own start-up left out (counted separately)."""
        return max(0.0, self.extract.children - self.workers * self.startup_cpu) / len(self.runs)


def recorded_bytes(instance: dg.DagsterInstance, run_id: str) -> int:
    """The Xero response bytes a run's raw materialisations recorded (xero/bytes, per endpoint)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                           limit=1000).records
    return sum(int(getattr(m, "value", m) or 0) for r in records
               if (m := r.event_log_entry.asset_materialization.metadata.get("xero/bytes")) is not None)


def measure_cycle(label: str, sandbox, instance: dg.DagsterInstance, concurrency: int,
                  db: PostgresCpu, log: TextIO) -> Cycle:
    sandbox.reset_stats(limits=False)
    marks: dict[str, Usage] = {}

    def progress(line: str) -> None:
        # sync_tenants says this once every extract worker has exited and been reaped: the one
        # moment that splits the children's CPU between the extracts and the build (dbt).
        if line.startswith("analytics build ("):
            marks["build"] = Usage.now(db)

    start = Usage.now(db)
    with contextlib.redirect_stdout(log):  # dbt's progress lines, as the demo does
        results = sync.sync_tenants(instance=instance, concurrency=concurrency, progress=progress)
    end = Usage.now(db)
    failed = [r for r in results if not r.success]
    if failed or "build" not in marks:
        for r in failed[:5]:
            print(f"  FAILED {r.tenant_id}: {r.error}")
        raise SystemExit(f"{label}: {len(failed)} tenant(s) failed, or the build never started")
    stats = sandbox.stats()
    runs = []
    for r in results:
        figures = run_figures(instance, r.run_id)
        served = stats["tenants"][r.tenant_id]
        runs.append(TenantRun(r.tenant_id, served["calls"], served["bytes"], figures["api_calls"],
                              recorded_bytes(instance, r.run_id), figures["records_loaded"], r.seconds))
    return Cycle(label, runs, marks["build"] - start, end - marks["build"],
                 workers=min(concurrency, len(results)),
                 rate_limited=sum(row["status"].get("429", 0) for row in stats["endpoints"]),
                 peak_child_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


# -- printing -------------------------------------------------------------------------------------------

def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU(s) ({model}), {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:,.1f} h"
    if s >= 60:
        return f"{s / 60:,.1f} min"
    return f"{s:,.1f} s"


def print_measured(cycles: list[Cycle], db_measured: bool) -> None:
    print("\nMEASURED, per tenant (calls and bytes: what the sandbox served; rows: loaded into raw_xero; "
          "wall: the extract run)")
    print(f"  {'cycle':<10} {'tenant':<10} {'calls':>6} {'bytes':>10} {'rows':>7} {'wall s':>7}")
    for c in cycles:
        for r in c.runs:
            print(f"  {c.label:<10} {r.tenant_id[:8]:<10} {r.calls:>6} {fmt_bytes(r.bytes):>10} "
                  f"{r.rows:>7,} {r.seconds:>7.2f}")
    print()
    db_note = "" if db_measured else " (n/a: the server is not on this machine)"
    for c in cycles:
        recorded = (sum(r.recorded_calls for r in c.runs), sum(r.recorded_bytes for r in c.runs))
        served = (sum(r.calls for r in c.runs), sum(r.bytes for r in c.runs))
        n = len(c.runs)
        print(f"  {c.label}: {n} tenants in {c.extract.wall:.1f} s of extracts ({c.workers} workers) + "
              f"{c.build.wall:.1f} s build; {c.rate_limited} 429s; the runs recorded {recorded[0]} calls, "
              f"{fmt_bytes(recorded[1])} ({'=' if recorded == served else '!='} the sandbox's)")
        print(f"    per tenant (mean): {c.mean('calls'):.1f} calls, {fmt_bytes(c.mean('bytes'))}, "
              f"{c.mean('rows'):,.0f} rows, extract run {c.mean('seconds'):.2f} s wall, "
              f"{c.extract_cpu_per_tenant:.2f} CPU-s in its worker, "
              f"{c.extract.database / n:.2f} PostgreSQL CPU-s{db_note}")
        print(f"    analytics build ({c.rows:,} rows loaded this cycle): {c.build.wall:.1f} s wall, "
              f"{c.build.own + c.build.children:.1f} CPU-s (dbt + Dagster), "
              f"{c.build.database:.1f} PostgreSQL CPU-s{db_note}")
    print(f"  extract worker start-up (spawn + definitions), once per worker here and per ECS run task: "
          f"{cycles[0].startup_cpu:.2f} CPU-s")
    print(f"  peak RSS of a worker or dbt: {cycles[-1].peak_child_rss_mb:.0f} MB")


# -- the projection ---------------------------------------------------------------------------------------

@dataclass
class Line:
    """Cost of a build as `fixed + per_row x rows loaded that cycle`, fitted through two builds."""

    fixed: float
    per_row: float

    @classmethod
    def through(cls, x0: float, y0: float, x1: float, y1: float) -> Line:
        per_row = max(0.0, (y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0  # noise can tilt it below 0
        return cls(max(0.0, y0 - per_row * x0), per_row)

    def at(self, rows: float) -> float:
        return self.fixed + self.per_row * rows


def project(args, full: Cycle, daily: Cycle, db_measured: bool) -> None:
    f = args.full_share

    def day(value) -> float:  # one tenant's day: an incremental sync, or (a share f) its weekly re-read
        return (1 - f) * value(daily) + f * value(full)

    calls = day(lambda c: c.mean("calls"))
    egress = day(lambda c: c.mean("bytes"))
    rows = day(lambda c: c.mean("rows"))
    cpu = day(lambda c: c.extract_cpu_per_tenant)
    db_cpu = day(lambda c: c.extract.database / len(c.runs))
    startup = full.startup_cpu
    # This machine's pace: --concurrency workers, each running extract after extract at the measured
    # run wall time (their start-up is paid once per worker, not per tenant).
    local_wall = day(lambda c: c.mean("seconds") / c.workers)
    build_wall = Line.through(daily.rows, daily.build.wall, full.rows, full.build.wall)
    build_cpu = Line.through(daily.rows, daily.build.own + daily.build.children,
                             full.rows, full.build.own + full.build.children)
    build_db = Line.through(daily.rows, daily.build.database, full.rows, full.build.database)
    # One ECS run task: Fargate's start, the run worker's start-up, the extract, Xero's answers.
    task_wall = (args.task_start_seconds + (startup + cpu) / args.task_vcpu
                 + calls * args.xero_seconds_per_call)
    task_billed = max(60.0, task_wall)  # Fargate bills per second, one minute at least
    task_price = args.task_vcpu * args.vcpu_hour + args.task_gb * args.gb_hour  # $ per task-hour
    usable = XERO_DAY_LIMIT - DEFAULT_DAY_RESERVE
    build_interval = analytics_after_extracts.minimum_interval_seconds
    peak_calls = full.mean("calls")  # a tenant's heaviest day: its weekly full re-read

    sizes = args.fleet
    width = 16
    head = "".join(f"{f'{n:,} tenants':>{width}}" for n in sizes)
    print(f"\nPROJECTED: one daily cycle ({1 - f:.3f} of the tenants incremental, {f:.3f} re-reading "
          f"everything)")
    print(f"  {'':<58}{head}")

    def row(label: str, value, fmt=lambda v: f"{v:,.0f}") -> None:
        print(f"  {label:<58}" + "".join(f"{fmt(value(n)):>{width}}" for n in sizes))

    row("Xero calls", lambda n: n * calls)
    row(f"  least wall time at the app limit ({args.app_minute_limit:,}/min)",
        lambda n: n * calls / args.app_minute_limit * 60, fmt_seconds)
    row("Egress from Xero (response bodies, uncompressed)", lambda n: n * egress, fmt_bytes)
    row(f"  per {DAYS_PER_MONTH} days", lambda n: n * egress * DAYS_PER_MONTH, fmt_bytes)
    row("Rows loaded into raw_xero", lambda n: n * rows)
    row("CPU, extracts (worker CPU-s)", lambda n: n * cpu)
    row("CPU, ECS run-task start-up (one per tenant run, CPU-s)", lambda n: n * startup)
    row("CPU, analytics build (dbt + Dagster, CPU-s)", lambda n: build_cpu.at(n * rows))
    if db_measured:
        row("CPU, PostgreSQL (extracts + build, CPU-s)", lambda n: n * db_cpu + build_db.at(n * rows))
    row("  all of it (one build), CPU-hours consumed",
        lambda n: (n * (cpu + startup) + build_cpu.at(n * rows)
                   + (n * db_cpu + build_db.at(n * rows) if db_measured else 0)) / 3600,
        lambda v: f"{v:,.2f}")
    row("Analytics build wall time (one build of the whole cycle)", lambda n: build_wall.at(n * rows),
        fmt_seconds)
    row(f"Cycle wall time, this machine, {args.concurrency} workers (measured pace)",
        lambda n: n * local_wall + build_wall.at(n * rows), fmt_seconds)

    def ecs_extracts(n: int, tasks: int) -> float:  # tasks back to back, never faster than the app limit
        return max(math.ceil(n / tasks) * task_wall, n * calls / args.app_minute_limit * 60)

    def ecs_builds(n: int, tasks: int) -> int:
        # The sensor starts a build whenever loads wait and none runs: one per (interval + build)
        # while the extracts go on, each taking what arrived since the last.
        return max(1, math.ceil(ecs_extracts(n, tasks) / (build_interval + build_wall.fixed)))

    for tasks in args.ecs_tasks:
        row(f"Cycle wall time, {tasks} ECS run tasks at once",
            lambda n, t=tasks: ecs_extracts(n, t) + build_wall.at(n * rows / ecs_builds(n, t)), fmt_seconds)
        row("  analytics builds during it (CPU-s of their fixed part)",
            lambda n, t=tasks: (ecs_builds(n, t), ecs_builds(n, t) * build_cpu.fixed),
            lambda v: f"{v[0]:,} ({v[1]:,.0f})")
    tasks = min(args.ecs_tasks)  # the most builds: an upper bound of their cost

    def billed_hours(n: int) -> float:  # Fargate task-hours: an extract task per tenant, and the builds
        builds = ecs_builds(n, tasks)
        return (n * task_billed + builds * max(60.0, build_wall.at(n * rows / builds))) / 3600

    row(f"Fargate task-hours, {args.task_vcpu:g} vCPU + {args.task_gb:g} GB each (builds as at {tasks})",
        billed_hours, lambda v: f"{v:,.1f}")
    row("  Fargate $ per cycle", lambda n: billed_hours(n) * task_price, lambda v: f"${v:,.2f}")
    row(f"  Fargate $ per {DAYS_PER_MONTH} days", lambda n: billed_hours(n) * task_price * DAYS_PER_MONTH,
        lambda v: f"${v:,.0f}")
    row(f"NAT data processing $ per {DAYS_PER_MONTH} days",
        lambda n: n * egress * DAYS_PER_MONTH / 1e9 * args.nat_gb, lambda v: f"${v:,.2f}")

    print("\nASSUMPTIONS (every figure above is computed from the measured ones and these)")
    print(f"  - Tenants like the measured ones: {args.invoices:,} invoices; a paged endpoint costs "
          f"ceil(records / page size) calls on a full read, one call per endpoint when little changed. "
          f"A day: {1 - f:.3f} x the measured daily sync + {f:.3f} x the full sync (each tenant re-reads "
          f"everything once a week, a seventh of the fleet a day; --full-share).")
    print(f"  - Per tenant: {calls:.1f} calls a day on average, {peak_calls:.0f} on its re-read day = "
          f"{peak_calls / usable:.2%} of the {usable:,} of Xero's {XERO_DAY_LIMIT:,}/day the sync may use "
          f"(XERO_DAY_RESERVE {DEFAULT_DAY_RESERVE}); the per-tenant {XERO_TENANT_CALLS_PER_MINUTE}/min "
          f"never binds at this size. App-wide: {args.app_minute_limit:,} calls/min "
          f"(XERO_APP_MINUTE_LIMIT, shared through PostgreSQL) gives the least wall time shown; "
          f"concurrency is capped at {XERO_APP_CALLS_PER_MINUTE // XERO_TENANT_CALLS_PER_MINUTE} "
          f"(= {XERO_APP_CALLS_PER_MINUTE:,} / {XERO_TENANT_CALLS_PER_MINUTE}) tenants at full speed.")
    print(f"  - CPU is this machine's ({machine()}); extract CPU excludes the worker's start-up "
          f"({startup:.2f} CPU-s), which every ECS run task pays again.")
    print(f"  - The build costs fixed + per row loaded since the last build, a line through the two "
          f"measured builds ({daily.rows:,} and {full.rows:,} rows): wall {build_wall.fixed:.1f} s + "
          f"{build_wall.per_row * 1000:.2f} s per 1,000 rows, CPU {build_cpu.fixed:.1f} s + "
          f"{build_cpu.per_row * 1000:.2f} s per 1,000 rows"
          + (f", PostgreSQL {build_db.fixed:.1f} s + {build_db.per_row * 1000:.2f} s per 1,000 rows" if
             db_measured else "")
          + ". The first build also creates the tables, and a build over a larger database costs more "
            "per row (bench/dbt_incremental.py measures it at 1,000,000 invoices): a rough guide.")
    print(f"  - This machine: {args.concurrency} workers each running extract after extract at the "
          f"measured run wall time = {local_wall:.2f} s per tenant ({os.cpu_count()} cores shared with the "
          f"sandbox, PostgreSQL and whatever else ran: see the load average).")
    print(f"  - ECS: one run task per tenant run (the ECS run launcher); a task takes "
          f"{args.task_start_seconds:g} s to start (--task-start-seconds: placement and image pull, "
          f"billed), then the start-up and extract CPU on {args.task_vcpu:g} vCPU as fast as a core "
          f"here, plus {args.xero_seconds_per_call:g} s per Xero call (--xero-seconds-per-call; the "
          f"sandbox is local, Xero's latency is not measured) = {task_wall:.1f} s per task, billed "
          f"{task_billed:.0f} s (Fargate's one-minute minimum). Tasks run back to back, never "
          f"faster than the app limit allows; the daemon's launch rate and ECS's RunTask throttling "
          f"are not modelled. On ECS the analytics_after_extracts sensor (every {build_interval} s) "
          f"starts a build whenever loads wait and none runs, so a long cycle has several, each a task "
          f"and each paying the build's fixed part again; `xero-elt sync` builds once, at the end.")
    print(f"  - Prices (--vcpu-hour, --gb-hour, --nat-gb; ap-southeast-2 on-demand Linux/x86, as known "
          f"in 2025, check the AWS price list): Fargate ${args.vcpu_hour}/vCPU-hour, "
          f"${args.gb_hour}/GB-hour; NAT gateway ${args.nat_gb}/GB processed. Not included: RDS, the "
          f"always-on services (webserver, daemon, code server), NAT hours, CloudWatch Logs.")
    print("  - Egress is the JSON bodies as the client received them (decompressed); on the wire it is "
          "less if Xero compresses. Ingress to AWS is free; it is the NAT gateway that charges per GB.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=8,
                    help="tenants measured (at least 2; a multiple of --concurrency keeps the workers busy)")
    ap.add_argument("--invoices", type=int, default=500, help="invoices per tenant")
    ap.add_argument("--changed", type=float, default=0.03,
                    help="share of each tenant's invoices changed before the daily sync")
    ap.add_argument("--concurrency", type=int, default=4, help="extract workers (at least 2)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--fleet", type=int, nargs="+", default=[1_000, 10_000], help="fleet sizes projected")
    ap.add_argument("--ecs-tasks", type=int, nargs="+", default=[50, 166],
                    help="concurrent ECS run tasks (max_concurrent_runs)")
    ap.add_argument("--full-share", type=float, default=1 / 7,
                    help="share of the fleet re-reading everything on a day (weekly full refresh)")
    ap.add_argument("--app-minute-limit", type=int, default=XERO_APP_CALLS_PER_MINUTE)
    ap.add_argument("--task-start-seconds", type=float, default=45.0)
    ap.add_argument("--xero-seconds-per-call", type=float, default=1.0)
    ap.add_argument("--task-vcpu", type=float, default=1.0, help="RunCpu 1024 in dagster-ecs.yaml")
    ap.add_argument("--task-gb", type=float, default=4.0, help="RunMemory 4096 in dagster-ecs.yaml")
    ap.add_argument("--vcpu-hour", type=float, default=0.04856, help="Fargate $/vCPU-hour")
    ap.add_argument("--gb-hour", type=float, default=0.00532, help="Fargate $/GB-hour")
    ap.add_argument("--nat-gb", type=float, default=0.059, help="NAT gateway $/GB processed")
    args = ap.parse_args()
    if args.tenants < 2 or args.concurrency < 2:
        # With one of either, sync_tenants extracts in this process: its CPU would mix with the sandbox's.
        ap.error("--tenants and --concurrency must be at least 2 (extracts in worker processes)")

    print(f"fleet_cost: {args.tenants} tenants x {args.invoices:,} invoices, {args.concurrency} workers, "
          f"Xero's limits on; {machine()}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    started = time.perf_counter()
    with bench_platform(tenants=args.tenants, invoices=args.invoices, seed=args.seed) as (sandbox, instance):
        databases = {DatabaseUrl.parse(os.environ[v]).database
                     for v in ("DATABASE_URL", "DAGSTER_POSTGRES_URL")}
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
        print(f"  PostgreSQL {server}; platform ready in {time.perf_counter() - started:.1f} s", flush=True)
        db = PostgresCpu(databases)
        db.start()
        log_path = Path(tempfile.gettempdir()) / "fleet_cost-sync.log"
        with open(log_path, "w") as log:
            try:
                full = measure_cycle("full", sandbox, instance, args.concurrency, db, log)
                print(f"  first (full) sync done: {full.extract.wall + full.build.wall:.1f} s", flush=True)
                changed = max(1, round(args.invoices * args.changed))
                for t in sandbox.tenants:
                    sandbox.mutate(t.tenant_id, "random", count=changed, seed=7)
                daily = measure_cycle("daily", sandbox, instance, args.concurrency, db, log)
                print(f"  daily sync ({changed} invoice change(s) per tenant) done: "
                      f"{daily.extract.wall + daily.build.wall:.1f} s (dbt's output: {log_path})", flush=True)
                startup = worker_startup_cpu(instance)
            finally:
                db.stop()
        full.startup_cpu = daily.startup_cpu = startup
        db_measured = db.seen_backends > 0
    print_measured([full, daily], db_measured)
    project(args, full, daily, db_measured)
    print(f"\n(run took {time.perf_counter() - started:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
