"""Benchmark: the dbt project's set-based incremental build over many tenants' invoices.

Creates a database of its own, runs the migrations and one real dlt sync of a two-tenant sandbox
(so raw_xero's tables have dlt's real schema), then synthesises --tenants x --invoices-per-tenant raw
invoices (set-based SQL cloning a real raw row, one dlt load per tenant, registered in
raw_xero._dlt_loads) with an organisation and an app.xero_connections row per tenant. Then times
`dbt build` (a subprocess, as the orchestrator runs it; `dbt parse` once first so every phase reuses
the same partial parse):

    full            the first build, every load pending
    full-refresh    `dbt build --full-refresh`
    1% changed      1% of the invoices get a new version (later UpdatedDateUTC, new status/amount),
                    one new load per tenant, spread over all of history
    1% recent       the same for the latest 1% of each tenant's invoices (the everyday shape)
    nothing         no new load at all
    1 tenant        one tenant, one new load with 10 changed invoices
    all tenants     every tenant, one new load each with 10 changed invoices

A new load also carries the tenant's organisation again, unchanged (dlt upserts raw_xero.organisation
on every sync, so its row takes the new load id), as a real sync's load does. Between phases (not
timed) the tables are VACUUM ANALYZEd, i.e. autovacuum has caught up between two syncs
(--no-vacuum to skip). After each phase: analytics.invoices has every invoice, the rows rebuilt
(synced_at) are the changed ones, and they show their new status, amount and UpdatedDateUTC.

    .venv/bin/python bench/dbt_incremental.py [--tenants 100 --invoices-per-tenant 10000]
    .venv/bin/python bench/dbt_incremental.py --tenants 10 --invoices-per-tenant 1000   # quick check

The server: $TEST_DATABASE_URL, else --server-url (default postgresql://postgres@127.0.0.1:5432/postgres).

Figures (2026-12-02, 2 cores shared with other test suites, PostgreSQL 15 as configured: work_mem 4MB,
1,000,000 invoices, 100 tenants; wall s incl. ~3-5 s of dbt start-up):
    at ec458e3 (before kpi_monthly): full 67.8-77.3, full-refresh 78.5-84.1, 1% 19.5-22.0 (0.29 of full),
      nothing 13.8-14.2, 1 tenant 12.8-16.9, 100 tenants 13.7-16.3; `invoices` alone takes 4.3-6.0 s
      with nothing pending (its `or` filter scans stg_xero__invoices and analytics.invoices in full)
    at d2c22f7 (kpi_monthly, load average ~5): full 207.4, 1% 77.5 (0.37), nothing 18.8,
      1 tenant 19.0, 100 tenants 57.8 (3.0x: kpi_monthly 8.8 s vs 43.5 s)
    at 4bccb8c (kpi_monthly per affected month, expanded per document; no JIT): full 98.3,
      full-refresh 91.7, 1% spread 41.5 (0.42), 1% recent 22.6 (0.23), nothing 6.8, 1 tenant 10.0,
      100 tenants 34.2; canonical layer (staging + invoices, node s): full 57.6, 1% 6.0 (0.105),
      1% recent 5.2 (0.091), nothing/1 tenant/100 tenants 3.3/3.3/3.4; kpi_monthly: full 31.1,
      1% spread 31.0 (every month of every tenant is touched), 1% recent 13.3, nothing 0.16,
      1 tenant 1.3, 100 tenants 26.7

dbt runs on a copy of dbt_project taken at the start (the working tree's, or --git-ref's), with
temporary target and log folders: edits made while it runs do not change its phases.
--project-dir benchmarks another copy (e.g. a patched one) instead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from oauth_service.migrations import upgrade
from orchestration.resources import XeroPipelineResource
from orchestration.settings import DBT_PROJECT_DIR, REPO_ROOT, TELEMETRY_OFF, DatabaseUrl
from xero_sandbox import SandboxConfig, SandboxServer
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import SourceSettings, xero_source

DBT = str(Path(sys.executable).with_name("dbt"))
RAW = "raw_xero"
TENANT_NAMESPACE = uuid.UUID("6f1c3d2e-4b5a-4c8d-9e0f-1a2b3c4d5e6f")
BENCH_USER = "0b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
DUMMY_TOKEN = "v1:bench-dummy-ciphertext-not-a-token"
SMALL_CHANGES = 10  # changed invoices in each load of the two small phases

# Each synthetic invoice n of a tenant: its values, from n (deterministic, varied).
SYNTH_G = """
    SELECT t.tenant_id AS g_tenant, t.load_id AS g_load, n AS g_n,
           md5(t.tenant_id || ':' || n)::uuid::text AS g_invoice,
           (ARRAY['DRAFT', 'SUBMITTED', 'AUTHORISED', 'AUTHORISED', 'PAID', 'PAID', 'PAID', 'PAID',
                  'VOIDED', 'DELETED'])[1 + n % 10] AS g_status,
           CASE WHEN n % 7 = 0 THEN 'USD' WHEN n % 11 = 0 THEN 'AUD' ELSE {base} END AS g_currency,
           round(10 + (n::bigint * 7919 % 500000) / 100.0, 2) AS g_sub,
           round(round(10 + (n::bigint * 7919 % 500000) / 100.0, 2) * 0.15, 2) AS g_tax,
           timestamptz '2023-01-01 00:00:00+00' + (n % 1000) * interval '1 day' AS g_date
    FROM unnest({tenants}::text[], {loads}::text[]) AS t(tenant_id, load_id)
    CROSS JOIN generate_series(1, {per}) AS n
"""

SYNTH_COLUMNS = {
    "tenant_id": "g.g_tenant",
    "invoice_id": "g.g_invoice",
    "invoice_number": "'INV-' || lpad(g.g_n::text, 7, '0')",
    "type": "CASE WHEN g.g_n % 5 = 0 THEN 'ACCPAY' ELSE 'ACCREC' END",
    "status": "g.g_status",
    "reference": "'REF-' || g.g_n",
    "currency_code": "g.g_currency",
    "currency_rate": "CASE g.g_currency WHEN 'USD' THEN 0.6123 WHEN 'AUD' THEN 0.9234 ELSE 1 END",
    "sub_total": "g.g_sub",
    "total_tax": "g.g_tax",
    "total": "g.g_sub + g.g_tax",
    "amount_paid": "CASE WHEN g.g_status = 'PAID' THEN g.g_sub + g.g_tax ELSE 0 END",
    "amount_due": "CASE WHEN g.g_status IN ('SUBMITTED', 'AUTHORISED') THEN g.g_sub + g.g_tax ELSE 0 END",
    "amount_credited": "0",
    "date": "g.g_date",
    "date_string": "g.g_date",
    "due_date": "g.g_date + interval '30 days'",
    "due_date_string": "g.g_date + interval '30 days'",
    "fully_paid_on_date": "CASE WHEN g.g_status = 'PAID' THEN g.g_date + interval '20 days' END",
    "updated_date_utc": "g.g_date + interval '21 days' + (g.g_n % 86400) * interval '1 second'",
    "updated_date_utc_string": "g.g_date + interval '21 days' + (g.g_n % 86400) * interval '1 second'",
    # Raw JSON columns are `json` (ADBC's COPY cannot write jsonb): edited as jsonb, stored back as json.
    "contact": ("(tpl.contact::jsonb || jsonb_build_object('ContactID', md5(g.g_tenant || ':contact:' "
                "|| (g.g_n % 500))::uuid::text, 'Name', 'Customer ' || (g.g_n % 500)))::json"),
    "_dlt_load_id": "g.g_load",
    "_dlt_id": "md5(g.g_load || ':' || g.g_invoice)",
}

# A new version of an invoice (`r`, its latest raw version): later, with a new status and amount.
NEW_STATUS = ("CASE r.status WHEN 'DRAFT' THEN 'SUBMITTED' WHEN 'SUBMITTED' THEN 'AUTHORISED' "
              "WHEN 'AUTHORISED' THEN 'PAID' WHEN 'PAID' THEN 'AUTHORISED' ELSE r.status END")
CHANGE_COLUMNS = {
    "status": NEW_STATUS,
    "sub_total": "r.sub_total + 1",
    "total": "r.total + 1",
    "amount_due": f"CASE WHEN ({NEW_STATUS}) IN ('SUBMITTED', 'AUTHORISED') THEN r.total + 1 ELSE 0 END",
    "amount_paid": f"CASE WHEN ({NEW_STATUS}) = 'PAID' THEN r.total + 1 ELSE 0 END",
    "updated_date_utc": "r.updated_date_utc + interval '1 day'",
    "updated_date_utc_string": "r.updated_date_utc + interval '1 day'",
    "_dlt_load_id": "r.new_load_id",
    "_dlt_id": "md5(r.new_load_id || ':' || r.invoice_id)",
}


@dataclass
class Phase:
    label: str
    wall: float
    changed: int  # invoice versions in this phase's new loads
    rebuilt: int  # analytics.invoices rows this build wrote (synced_at)
    moved: int  # of which updated_at moved (a value changed)
    dbt_elapsed: float
    nodes: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, db: DatabaseUrl, project: Path, workdir: Path, vacuum: bool) -> None:
        self.db = db
        self.project = project
        self.target = workdir / "target"
        self.logs = workdir / "logs"
        self.vacuum = vacuum
        self.last_load_base = 0
        self.schema_hash: str | None = None
        self.env = {**os.environ, **TELEMETRY_OFF, **db.dbt_env(), "DO_NOT_TRACK": "1"}

    def conn(self) -> psycopg.Connection:
        return psycopg.connect(self.db.url, autocommit=True)

    # -- dbt ------------------------------------------------------------------------------------------

    def dbt(self, *args: str) -> float:
        cmd = [DBT, *args, "--project-dir", str(self.project), "--profiles-dir", str(self.project),
               "--target-path", str(self.target), "--log-path", str(self.logs)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-6000:]}\n"
                             f"{done.stderr[-3000:]}")
        return wall

    def run_results(self) -> tuple[float, dict[str, float]]:
        results = json.loads((self.target / "run_results.json").read_text())
        bad = [r["unique_id"] for r in results["results"] if r["status"] not in ("success", "pass", "warn")]
        if bad:
            raise SystemExit(f"dbt nodes not successful: {bad}")
        return results["elapsed_time"], {r["unique_id"]: r["execution_time"] for r in results["results"]}

    # -- raw data -------------------------------------------------------------------------------------

    def raw_columns(self, table: str) -> list[str]:
        with self.conn() as c:
            return [r[0] for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s ORDER BY ordinal_position", (RAW, table))]

    def new_loads(self, count: int) -> list[str]:
        """`count` dlt load ids, later than every earlier one (same width: text order = time order)."""
        base = max(int(time.time()), self.last_load_base + 1)
        self.last_load_base = base
        return [f"{base}.{i:06d}" for i in range(count)]

    def register_loads(self, c: psycopg.Connection, loads: list[str]) -> None:
        c.execute(
            "INSERT INTO raw_xero._dlt_loads "
            "(load_id, schema_name, status, inserted_at, schema_version_hash) "
            "SELECT l, 'xero', 0, now(), %s FROM unnest(%s::text[]) AS l", (self.schema_hash, loads))

    def synthesise(self, tenants: list[str], per_tenant: int) -> None:
        loads = self.new_loads(len(tenants))
        inv_cols = self.raw_columns("invoices")
        org_cols = self.raw_columns("organisation")
        with self.conn() as c:
            tpl_invoice = c.execute(
                "SELECT _dlt_id FROM raw_xero.invoices WHERE json_typeof(line_items) = 'array' "
                "ORDER BY abs(json_array_length(line_items) - 2), invoice_id LIMIT 1").fetchone()[0]
            tpl_org, base = c.execute("SELECT _dlt_id, base_currency FROM raw_xero.organisation "
                                      "ORDER BY tenant_id LIMIT 1").fetchone()
            real_tenants = [r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM raw_xero.invoices")]
            self.schema_hash = c.execute("SELECT schema_version_hash FROM raw_xero._dlt_loads "
                                         "ORDER BY inserted_at DESC LIMIT 1").fetchone()[0]
            c.execute(
                "INSERT INTO app.xero_connections (user_id, tenant_id, tenant_name, tenant_type, "
                "access_token, refresh_token, token_expires_at, scopes, grant_id, status) "
                "SELECT %s, t, 'Bench org ' || i, 'ORGANISATION', %s, %s, now() + interval '30 minutes', "
                "'accounting.invoices.read', %s, 'active' FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i)",
                (BENCH_USER, DUMMY_TOKEN, DUMMY_TOKEN, str(uuid.uuid4()), tenants))
            org_override = {
                "tenant_id": "u.t", "organisation_id": "u.t", "name": "'Bench org ' || u.i",
                "legal_name": "'Bench org ' || u.i || ' Ltd'", "short_code": "'!B' || u.i",
                "_dlt_load_id": "u.l", "_dlt_id": "md5(u.l || ':org')",
            }
            c.execute(sql.SQL(
                "INSERT INTO raw_xero.organisation ({cols}) SELECT {exprs} FROM raw_xero.organisation AS tpl "
                "CROSS JOIN unnest(%s::text[], %s::text[]) WITH ORDINALITY AS u(t, l, i) "
                "WHERE tpl._dlt_id = %s"
            ).format(cols=names(org_cols), exprs=select_list(org_cols, org_override, "tpl")),
                (tenants, loads, tpl_org))
            t0 = time.perf_counter()
            g = sql.SQL(SYNTH_G).format(base=sql.Literal(base), tenants=sql.Literal(tenants),
                                        loads=sql.Literal(loads), per=sql.Literal(per_tenant))
            cur = c.execute(sql.SQL(
                "INSERT INTO raw_xero.invoices ({cols}) SELECT {exprs} FROM ({g}) AS g "
                "CROSS JOIN (SELECT * FROM raw_xero.invoices WHERE _dlt_id = {tpl}) AS tpl"
            ).format(cols=names(inv_cols), exprs=select_list(inv_cols, SYNTH_COLUMNS, "tpl"),
                     g=g, tpl=sql.Literal(tpl_invoice)))
            inserted = cur.rowcount
            # The real sandbox tenants only gave the tables their schema: keep the synthetic tenants alone.
            for table in ("invoices", "contacts", "payments", "credit_notes", "accounts", "organisation"):
                c.execute(sql.SQL("DELETE FROM raw_xero.{} WHERE tenant_id = ANY(%s)").format(
                    sql.Identifier(table)), (real_tenants,))
            c.execute("DELETE FROM raw_xero._dlt_loads")
            self.register_loads(c, loads)
            print(f"synthesised {inserted:,} raw invoices for {len(tenants)} tenants "
                  f"({per_tenant:,} each, one load per tenant) in {time.perf_counter() - t0:.1f} s")
        self.maintain()

    def change(self, tenants: list[str], invoice_numbers: list[int]) -> tuple[int, list[str]]:
        """A new version of invoices `invoice_numbers` of each tenant, one new load per tenant."""
        loads = self.new_loads(len(tenants))
        cols = self.raw_columns("invoices")
        with self.conn() as c, c.transaction():
            cur = c.execute(sql.SQL("""
                WITH chosen AS (
                    SELECT t.tenant_id, t.load_id, md5(t.tenant_id || ':' || n)::uuid::text AS invoice_id
                    FROM unnest(%(tenants)s::text[], %(loads)s::text[]) AS t(tenant_id, load_id)
                    CROSS JOIN unnest(%(ns)s::int[]) AS n
                ),
                r AS (
                    SELECT DISTINCT ON (i.tenant_id, i.invoice_id) i.*, chosen.load_id AS new_load_id
                    FROM raw_xero.invoices AS i JOIN chosen USING (tenant_id, invoice_id)
                    ORDER BY i.tenant_id, i.invoice_id, i.updated_date_utc DESC
                )
                INSERT INTO raw_xero.invoices ({cols}) SELECT {exprs} FROM r
            """).format(cols=names(cols), exprs=select_list(cols, CHANGE_COLUMNS, "r")),
                {"tenants": tenants, "loads": loads, "ns": invoice_numbers})
            changed = cur.rowcount
            # dlt upserts the organisation on every sync: its row now carries this load (same content).
            c.execute("UPDATE raw_xero.organisation AS o SET _dlt_load_id = t.load_id, "
                      "_dlt_id = md5(t.load_id || ':org') "
                      "FROM unnest(%s::text[], %s::text[]) AS t(tenant_id, load_id) "
                      "WHERE o.tenant_id = t.tenant_id",
                      (tenants, loads))
            self.register_loads(c, loads)
        return changed, loads

    def maintain(self, statement: str = "VACUUM (ANALYZE)") -> None:
        """Untimed: autovacuum caught up between two syncs (a whole-database VACUUM ANALYZE)."""
        if self.vacuum:
            with self.conn() as c:
                c.execute(statement)

    # -- one phase ------------------------------------------------------------------------------------

    def phase(self, label: str, dbt_args: tuple[str, ...], expected_rows: int, changed: int = 0,
              loads: list[str] | None = None, full: bool = False) -> Phase:
        with self.conn() as c:
            since = c.execute("SELECT (now() AT TIME ZONE 'UTC')::timestamp").fetchone()[0]
        wall = self.dbt("build", *dbt_args)
        elapsed, nodes = self.run_results()
        with self.conn() as c:
            rows = one(c, "SELECT count(*) FROM analytics.invoices")
            rebuilt = one(c, "SELECT count(*) FROM analytics.invoices WHERE synced_at >= %s", since)
            pending = one(c, "SELECT count(*) FROM staging.dbt_load_batches WHERE done_at IS NULL")
            quarantined = one(c, "SELECT count(*) FROM analytics.invoices_quarantine")
            # updated_at is now() only for a row whose values changed (else the built row's).
            moved = one(c, "SELECT count(*) FROM analytics.invoices WHERE updated_at >= %s", since)
            shows_new = 0
            if loads:
                shows_new = one(c, """
                    SELECT count(*) FROM raw_xero.invoices AS r
                    JOIN analytics.invoices AS a ON a.id = md5(r.tenant_id || ':' || r.invoice_id)::uuid
                    WHERE r._dlt_load_id = ANY(%s) AND a.status = r.status AND a.amount = r.total
                      AND a.xero_updated_date_utc = (r.updated_date_utc AT TIME ZONE 'UTC')
                """, loads)
        problems = []
        if rows != expected_rows:
            problems.append(f"analytics.invoices has {rows:,} rows, expected {expected_rows:,}")
        if pending or quarantined:
            problems.append(f"{pending} loads still pending, {quarantined} invoices quarantined")
        if loads and shows_new != changed:
            problems.append(f"{shows_new:,} of the {changed:,} changed invoices show their new values")
        if not full and rebuilt != changed:
            problems.append(f"{rebuilt:,} rows rebuilt for {changed:,} changed")
        if problems:
            raise SystemExit(f"{label}: " + "; ".join(problems))
        print(f"  {label}: {wall:.1f} s wall (dbt {elapsed:.1f} s), {rows:,} invoices, {rebuilt:,} rebuilt, "
              f"{moved:,} with a changed value", flush=True)
        return Phase(label, wall, changed, rebuilt, moved, elapsed, nodes)


def names(columns: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def select_list(columns: list[str], overrides: dict[str, str], alias: str) -> sql.Composable:
    """Each column: its override's expression, else the template row's value."""
    return sql.SQL(", ").join(sql.SQL(overrides[col]) if col in overrides
                              else sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(col))
                              for col in columns)


def one(c: psycopg.Connection, query: str, *params):
    return c.execute(query, params or None).fetchone()[0]


def snapshot_project(work: Path, git_ref: str | None, source: Path | None) -> tuple[Path, str]:
    """A copy of the dbt project: the working tree's (or `source`), or the one committed at `git_ref`."""
    if git_ref is None:
        shutil.copytree(source or DBT_PROJECT_DIR, work / "dbt_project",
                        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
        return work / "dbt_project", f"a copy of {source}" if source else "the working tree's dbt_project"
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", git_ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", commit, "dbt_project"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")
    return work / "dbt_project", f"dbt_project as committed at {git_ref} ({commit})"


def make_raw_schema(db: DatabaseUrl, home: str) -> None:
    """One real dlt sync of a small two-tenant sandbox: raw_xero's tables with dlt's real schema."""
    os.environ.update({**TELEMETRY_OFF, "DATABASE_URL": db.url, "DLT_DATA_DIR": home})
    with SandboxServer(SandboxConfig(seed=7, tenants=2, invoices_per_tenant=20)) as sandbox:
        token = sandbox_token(sandbox)["access_token"]
        settings = SourceSettings(api_url=sandbox.api_url)
        for tenant in sandbox.tenants:
            pipelines = XeroPipelineResource()
            pipelines.pipeline(tenant.tenant_id).run(
                xero_source(tenant.tenant_id, token_provider=lambda: token, settings=settings))


def short(unique_id: str) -> str:
    kind, _, name = unique_id.split(".", 2)
    if kind == "test":
        name = name.rsplit(".", 1)[0][:60]  # without dbt's hash suffix
    return name if kind == "model" else f"{kind}:{name}"


def print_nodes(phases: list[Phase]) -> None:
    models = sorted({n for p in phases for n in p.nodes if n.startswith("model.")})
    others = sorted({n for p in phases for n in p.nodes if not n.startswith(("model.", "test."))})
    width = max(len(x) for x in [*map(short, models + others), "tests (99/99, sum)"])
    print("\nper node, seconds (target/run_results.json execution_time; tests run 4 at a time)")
    print(f"{'node':<{width}} " + " ".join(f"{p.label:>14}" for p in phases))
    for node in models + others:
        times = " ".join(f"{p.nodes.get(node, float('nan')):>14.2f}" for p in phases)
        print(f"{short(node):<{width}} {times}")
    counts = {sum(1 for n in p.nodes if n.startswith("test.")) for p in phases}
    label = f"tests ({'/'.join(map(str, sorted(counts)))}, sum)"
    print(f"{label:<{width}} " + " ".join(
        f"{sum(t for n, t in p.nodes.items() if n.startswith('test.')):>14.2f}" for p in phases))
    slowest = sorted(((t, n) for n, t in phases[0].nodes.items() if n.startswith("test.")), reverse=True)[:3]
    print("slowest tests in the full build: " + ", ".join(f"{short(n)} {t:.2f} s" for t, n in slowest))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--invoices-per-tenant", type=int, default=10_000)
    ap.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-vacuum", action="store_true", help="no VACUUM ANALYZE between phases")
    ap.add_argument("--git-ref", help="dbt_project as committed at this ref (default: the working tree)")
    ap.add_argument("--project-dir", type=Path, help="another dbt project to copy (e.g. a patched one)")
    ap.add_argument("--keep-database", action="store_true")
    args = ap.parse_args()
    if args.git_ref and args.project_dir:
        ap.error("--git-ref or --project-dir, not both")
    if args.invoices_per_tenant < 100 or args.tenants < 1:
        ap.error("--invoices-per-tenant must be at least 100 (1%% of each tenant is changed)")

    server = DatabaseUrl.parse(os.environ.get("TEST_DATABASE_URL") or args.server_url)
    name = f"xero_elt_bench_dbt_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = server.with_database(name)
    total = args.tenants * args.invoices_per_tenant
    tenants = [str(uuid.uuid5(TENANT_NAMESPACE, f"bench-tenant-{i}")) for i in range(args.tenants)]
    try:
        with tempfile.TemporaryDirectory(prefix="xero-elt-bench-dbt-") as work:
            project, described = snapshot_project(Path(work), args.git_ref, args.project_dir)
            print(f"dbt project: {described}")
            upgrade(db.url)
            t0 = time.perf_counter()
            make_raw_schema(db, os.path.join(work, "dlt"))
            print(f"database {name}: migrated, raw schema from a real dlt sync of 2 sandbox tenants "
                  f"({time.perf_counter() - t0:.1f} s)")
            bench = Bench(db, project, Path(work), vacuum=not args.no_vacuum)
            bench.synthesise(tenants, args.invoices_per_tenant)
            parse = bench.dbt("parse")
            print(f"dbt parse (once; every build below reuses it): {parse:.1f} s")

            phases = [bench.phase("full", (), total, changed=total, full=True)]
            bench.maintain()
            phases.append(bench.phase("full-refresh", ("--full-refresh",), total, changed=total, full=True))
            bench.maintain()
            one_pct = [n for n in range(1, args.invoices_per_tenant + 1) if n % 100 == 0]
            changed, loads = bench.change(tenants, one_pct)
            bench.maintain()
            phases.append(bench.phase("1% changed", (), total, changed, loads))
            bench.maintain()
            # The everyday shape of a change: the latest invoices (dated in the last ten days of
            # each tenant's history), 1% of them.
            recent = [n for n in range(1, args.invoices_per_tenant + 1) if n % 1000 >= 990]
            changed, loads = bench.change(tenants, recent)
            bench.maintain()
            phases.append(bench.phase("1% recent", (), total, changed, loads))
            bench.maintain()
            phases.append(bench.phase("nothing", (), total))
            bench.maintain()
            changed, loads = bench.change(tenants[:1], list(range(1, SMALL_CHANGES + 1)))
            bench.maintain()
            phases.append(bench.phase("1 tenant", (), total, changed, loads))
            bench.maintain()
            changed, loads = bench.change(tenants, list(range(SMALL_CHANGES + 1, 2 * SMALL_CHANGES + 1)))
            bench.maintain()
            phases.append(bench.phase(f"{args.tenants} tenants", (), total, changed, loads))

            by = {p.label: p for p in phases}
            print(f"\n{total:,} invoices, {args.tenants} tenants x {args.invoices_per_tenant:,}; "
                  f"dbt threads 4, {os.cpu_count()} cores")
            print(f"{'phase':<14} {'wall s':>8} {'dbt s':>8} {'changed':>10} {'rebuilt':>10} "
                  f"{'value moved':>12}")
            for p in phases:
                print(f"{p.label:<14} {p.wall:>8.1f} {p.dbt_elapsed:>8.1f} {p.changed:>10,} {p.rebuilt:>10,} "
                      f"{p.moved:>12,}")
            small, many = by["1 tenant"], by[f"{args.tenants} tenants"]
            one_pct_ratio = by["1% changed"].wall / by["full"].wall
            print(f"incremental 1% / full:           {one_pct_ratio:.3f} (target < 0.1)")
            print(f"incremental 1% / full-refresh:   {by['1% changed'].wall / by['full-refresh'].wall:.3f}")
            print(f"{args.tenants} tenants small / 1 tenant small: {many.wall / small.wall:.2f} (target ~1)")
            print(f"nothing changed / full:          {by['nothing'].wall / by['full'].wall:.3f}")
            print(f"incremental 1% recent / full:    {by['1% recent'].wall / by['full'].wall:.3f}")
            # The canonical layer (staging and invoices) and the KPIs, each on its own (node times).
            for layer, in_layer in (("canonical layer", lambda n: not n.endswith(".kpi_monthly")),
                                    ("kpi_monthly", lambda n: n.endswith(".kpi_monthly"))):
                def layer_time(p: Phase, in_layer=in_layer) -> float:
                    return sum(t for n, t in p.nodes.items() if n.startswith("model.") and in_layer(n))
                full_time = layer_time(by["full"])
                print(f"{layer}: full {full_time:.1f} s; 1% {layer_time(by['1% changed']):.1f} s "
                      f"({layer_time(by['1% changed']) / full_time:.3f}); 1% recent "
                      f"{layer_time(by['1% recent']):.1f} s ({layer_time(by['1% recent']) / full_time:.3f}); "
                      f"nothing {layer_time(by['nothing']):.2f} s; 1 tenant {layer_time(small):.2f} s; "
                      f"{args.tenants} tenants {layer_time(many):.2f} s")
            print_nodes(phases)
    finally:
        if args.keep_database:
            print(f"kept database {name}")
        else:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
