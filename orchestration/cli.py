"""`xero-elt`: the one command line of the product (see README and ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from orchestration.settings import REPO_ROOT, SettingsError, local_dir, prepare_environment


def _cmd_demo(args: argparse.Namespace) -> int:
    from orchestration.demo import run_demo

    return run_demo(tenants=args.tenants, invoices=args.invoices, seed=args.seed)


def _cmd_sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    from xero_sandbox.cli import main

    return main(rest)


def _cmd_serve(args: argparse.Namespace) -> int:
    from oauth_service.server import serve
    from oauth_service.settings import Settings

    prepare_environment(dagster=False)
    serve(Settings.from_env(), host=args.host, port=args.port)
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    if args.action == "stop":
        from orchestration.local_postgres import LocalPostgres

        stopped = LocalPostgres(local_dir()).stop()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    from oauth_service import migrations

    db = prepare_environment(dagster=False)
    if args.action == "upgrade":
        migrations.upgrade(db.url, args.revision or "head")
    elif args.action == "downgrade":
        migrations.downgrade(db.url, args.revision or "base")
    print(f"app schema revision: {migrations.current(db.url)}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from oauth_service.migrations import upgrade
    from orchestration.sync import sync_tenants

    db = prepare_environment()
    upgrade(db.url)
    results = sync_tenants(args.tenant or None, full_refresh=args.full_refresh, concurrency=args.concurrency,
                           progress=lambda line: print(line, flush=True))
    if not results:
        print("no active tenants: connect a Xero organisation first")
        return 0
    print()
    print(summary_table(results))
    failed = sum(not r.success for r in results)
    print(f"{len(results) - failed} of {len(results)} tenant(s) synced"
          + (f", {failed} FAILED" if failed else ""))
    return 0 if not failed else 1


def summary_table(results) -> str:
    """One line per tenant: how it went, what was fetched, what analytics.invoices holds now."""
    head = ("tenant", "name", "status", "fetched", "invoices", "amount", "extract s", "run")
    rows = [(r.tenant_id, r.tenant_name or "", "ok" if r.success else "FAILED",
             f"{sum(r.fetched.values()):,}", f"{r.invoices:,}", f"{r.invoices_total:,}", f"{r.seconds:.1f}",
             r.run_id[:8])
            for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in (head, *rows)]
    errors = [f"{r.tenant_id}: {r.error}" for r in results if r.error]
    return "\n".join([*lines, *errors])


def _cmd_dbt(args: argparse.Namespace, rest: list[str]) -> int:
    """dbt on the configured database (the connection derived from DATABASE_URL, or the embedded
    one), e.g. `xero-elt dbt docs generate`."""
    from orchestration.dbt_project import DBT_EXECUTABLE

    prepare_environment(dagster=False)
    project = str(REPO_ROOT / "dbt_project")
    os.execv(DBT_EXECUTABLE, [DBT_EXECUTABLE, *rest, "--project-dir", project,  # noqa: S606
                              "--profiles-dir", project])
    return 0


def _cmd_kpis(args: argparse.Namespace) -> int:
    """A tenant's KPI table: one line per KPI, one column per month (the last `--months`)."""
    import psycopg

    from oauth_service.kpis import KPI_NAMES
    from orchestration.partitions import checked_tenant_id

    db = prepare_environment(dagster=False)
    tenant = checked_tenant_id(args.tenant)
    with psycopg.connect(db.url) as conn:
        try:
            rows = conn.execute(
                "SELECT period, kpi, value, unit, currency FROM analytics.kpi_monthly WHERE tenant_id = %s "
                "AND period > date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => %s)",
                (tenant, args.months)).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
    if not rows:
        print(f"no KPIs for tenant {tenant} yet: sync it first (xero-elt sync --tenant {tenant})")
        return 1
    periods = sorted({r[0] for r in rows})
    table = {(r[1], r[0]): r[2] for r in rows}
    units = {r[1]: (r[3], r[4]) for r in rows}
    cells = {key: "-" if value is None else f"{value:,}" for key, value in table.items()}
    width = max(len(k) for k in KPI_NAMES) + 2
    column = max(len(c) for c in [*cells.values(), "YYYY-MM"]) + 2  # figures never run together
    print(f"{'KPI':<{width}}{'unit':<10}" + "".join(f"{p:%Y-%m}".rjust(column) for p in periods))
    for kpi in KPI_NAMES:
        unit, currency = units.get(kpi, ("", None))
        row = "".join(cells.get((kpi, p), "-").rjust(column) for p in periods)
        print(f"{kpi:<{width}}{(currency or unit):<10}{row}")
    return 0


def _months(value: str) -> int:
    months = int(value)
    if not 1 <= months <= 240:
        raise argparse.ArgumentTypeError(f"--months must be between 1 and 240, got {months}")
    return months


def _cmd_ui(args: argparse.Namespace) -> int:
    from orchestration.demo import run_ui

    return run_ui(args.host, args.port)


# The image's commands (orchestration/entrypoints.py; the Dockerfile and compose.yaml run them).
def _cmd_migrate(args: argparse.Namespace) -> int:
    from orchestration.entrypoints import migrate

    return migrate()


def _cmd_code_server(args: argparse.Namespace) -> int:
    from orchestration.entrypoints import code_server

    return code_server(args.host, args.port)


def _cmd_webserver(args: argparse.Namespace) -> int:
    from orchestration.entrypoints import webserver

    return webserver(args.host, args.port, args.code_server)


def _cmd_daemon(args: argparse.Namespace) -> int:
    from orchestration.entrypoints import daemon

    return daemon(args.code_server)


def _cmd_health(args: argparse.Namespace) -> int:
    from orchestration.entrypoints import health

    return health(args.what, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xero-elt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on embedded defaults, end to end")
    p.add_argument("--tenants", type=int, default=2)
    p.add_argument("--invoices", type=int, default=400, help="invoices per demo tenant")
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sandbox", help="run the local Xero (see `xero-elt sandbox --help`)", add_help=False)
    p.set_defaults(func=_cmd_sandbox, passthrough=True)

    p = sub.add_parser("serve", help="run the OAuth service")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default=None, help="default: all interfaces; loopback in DEMO_MODE")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("db", help="app-schema migrations; stop the embedded PostgreSQL")
    p.add_argument("action", choices=["upgrade", "downgrade", "current", "stop"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=_cmd_db)

    p = sub.add_parser("sync", help="sync tenants through Dagster (default: every active tenant)")
    p.add_argument("--tenant", action="append", metavar="ID", help="a Xero tenant id; repeatable")
    p.add_argument("--full-refresh", action="store_true", help="re-read every record, not only changes")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="tenants extracted at once (default: XERO_SYNC_CONCURRENCY, else the cores, min. 2)")
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("kpis", help="a tenant's KPI table in the terminal")
    p.add_argument("--tenant", required=True, metavar="ID", help="a Xero tenant id")
    p.add_argument("--months", type=_months, default=12, help="how many months, ending with this one (1-240)")
    p.set_defaults(func=_cmd_kpis)

    p = sub.add_parser("dbt", help="dbt on the configured database, e.g. `xero-elt dbt docs generate`",
                       add_help=False)
    p.set_defaults(func=_cmd_dbt, passthrough=True)

    p = sub.add_parser("ui", help="the Dagster webserver and daemon on the configured instance (after the "
                       "demo, with its local Xero and OAuth service)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_cmd_ui)

    code_server_help = ("HOST[:PORT] of `xero-elt code-server` (default: $XERO_ELT_CODE_SERVER; "
                        "neither: load the code in a subprocess of this one)")

    def image_command(name: str, text: str) -> argparse.ArgumentParser:  # described in --help too
        return sub.add_parser(name, help=text, description=text)

    p = image_command("migrate", "apply the app-schema migrations, ensure the logins the deployment names "
                      "(APP_, PIPELINE_DATABASE_URL, DAGSTER_POSTGRES_URL), create and migrate Dagster's "
                      "storage; then exit")
    p.set_defaults(func=_cmd_migrate)

    p = image_command("code-server", "the Dagster code location over gRPC (`dagster api grpc -m "
                      "orchestration.definitions`); the runs are launched in it")
    p.add_argument("--port", type=int, default=4000)
    p.add_argument("--host", default="0.0.0.0", help="default: all interfaces (a container)")  # noqa: S104
    p.set_defaults(func=_cmd_code_server)

    p = image_command("webserver", "the Dagster UI alone (`dagster-webserver`)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="0.0.0.0", help="default: all interfaces (a container)")  # noqa: S104
    p.add_argument("--code-server", metavar="HOST[:PORT]", help=code_server_help)
    p.set_defaults(func=_cmd_webserver)

    p = image_command("daemon", "the Dagster daemon alone (`dagster-daemon run`): schedules, sensors, the "
                      "run queue, run monitoring and retries")
    p.add_argument("--code-server", metavar="HOST[:PORT]", help=code_server_help)
    p.set_defaults(func=_cmd_daemon)

    p = image_command("health", "exit 0 if the process is healthy (the image's HEALTHCHECK): the service's "
                      "/healthz, the webserver's /server_info, the code server's gRPC health, or the "
                      "daemons' heartbeats in Dagster's storage")
    p.add_argument("what", nargs="?", choices=["service", "webserver", "daemon", "code-server"],
                   help="default: what this container runs (its process 1's command line)")
    p.add_argument("--port", type=int, help="default: the port in that command line, else the command's own")
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    from oauth_service.secret_source import apply_secrets

    try:
        apply_secrets()  # <VAR>_SECRET_ID given: <VAR> from AWS Secrets Manager, before any setting is read
    except SettingsError as exc:
        print(f"xero-elt: configuration error: {exc}", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # libraries' own loggers propagate at INFO
        handler.setLevel(level)
    parser = build_parser()
    if argv and argv[0] == "sandbox":
        return _cmd_sandbox(argparse.Namespace(), argv[1:])
    if argv and argv[0] == "dbt":
        try:
            return _cmd_dbt(argparse.Namespace(), argv[1:])
        except SettingsError as exc:
            print(f"xero-elt: configuration error: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"xero-elt: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
