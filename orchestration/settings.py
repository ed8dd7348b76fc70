"""Orchestration settings: where things live and how the process environment is prepared.

Every room reads its own settings from environment variables. This module is the one place that
fills the gaps for local use: an embedded PostgreSQL when `DATABASE_URL` is unset, a Dagster home
under `.local/`, the dbt connection derived from `DATABASE_URL`, telemetry off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from oauth_service.settings import SettingsError, whole_number  # one error type for every bad setting

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DAGSTER_YAML_TEMPLATE = REPO_ROOT / "deploy" / "dagster.yaml"
RAW_SCHEMA = "raw_xero"
ANALYTICS_SCHEMA = "analytics"

# dlt, dbt and Dagster all phone home by default; a financial-data product must not.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DAGSTER_DISABLE_TELEMETRY": "1",
}

DEMO_ENV_FILE = "demo.env"
DEMO_WORLD_FILE = "demo-world.json"

# How many tenants `xero-elt sync` extracts at once. Xero allows 60 calls a minute per tenant and
# 10,000 a minute per app: at most 166 tenants can call at full speed together. On one machine the
# cores run out first: an extract is mostly CPU (typing pages, dlt's extract, normalise and load
# steps, the run's events), and more extracts than cores only contend. Measured on 2 cores, 48
# tenants' daily cycle (bench/fleet_cycle.py): 2 at a time 1.44 s a tenant, 4 1.87 s, 8 2.14 s. At
# least 2, so one tenant's waits on Xero overlap another's work.
SYNC_CONCURRENCY = "XERO_SYNC_CONCURRENCY"


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


DEFAULT_SYNC_CONCURRENCY = max(2, usable_cores())
XERO_APP_CALLS_PER_MINUTE = 10_000
XERO_TENANT_CALLS_PER_MINUTE = 60


def sync_concurrency(requested: int | None = None, environ=os.environ) -> int:
    """`requested` (the CLI's --concurrency), else XERO_SYNC_CONCURRENCY, else the default; checked."""
    raw = str(requested) if requested is not None else environ.get(SYNC_CONCURRENCY, "").strip()
    if not raw:
        return DEFAULT_SYNC_CONCURRENCY
    ceiling = XERO_APP_CALLS_PER_MINUTE // XERO_TENANT_CALLS_PER_MINUTE
    if not raw.isdigit() or not 1 <= int(raw) <= ceiling:
        raise SettingsError(f"the sync concurrency ({SYNC_CONCURRENCY}, --concurrency) must be a whole "
                            f"number from 1 to {ceiling} (Xero's app-wide limit over its per-tenant one), "
                            f"not {raw!r}")
    return int(raw)


APP_MINUTE_LIMIT = "XERO_APP_MINUTE_LIMIT"


def app_minute_limit(environ=os.environ) -> int:
    """Xero's app-wide calls per minute (XERO_APP_MINUTE_LIMIT, default 10,000), shared by every
    tenant's extract through PostgreSQL (orchestration/xero_budget.py); lower it to leave room
    for another consumer of the same Xero app."""
    return whole_number(environ, APP_MINUTE_LIMIT, XERO_APP_CALLS_PER_MINUTE, low=1,
                        high=XERO_APP_CALLS_PER_MINUTE)


# When the daily sync runs (cron, in the given time zone), and how long a tenant's Xero webhook
# events must have been quiet before they start its sync.
SYNC_SCHEDULE = "XERO_SYNC_SCHEDULE"
DEFAULT_SYNC_SCHEDULE = "0 2 * * *"
SYNC_TIMEZONE = "XERO_SYNC_TIMEZONE"
DEFAULT_SYNC_TIMEZONE = "UTC"
WEBHOOK_QUIET_SECONDS = "XERO_WEBHOOK_QUIET_SECONDS"
DEFAULT_WEBHOOK_QUIET_SECONDS = 120


def sync_schedule(environ=os.environ) -> tuple[str, str]:
    """(cron, time zone) of the daily sync: XERO_SYNC_SCHEDULE and XERO_SYNC_TIMEZONE; checked."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from dagster._utils.schedules import is_valid_cron_string

    cron = environ.get(SYNC_SCHEDULE, "").strip() or DEFAULT_SYNC_SCHEDULE
    timezone = environ.get(SYNC_TIMEZONE, "").strip() or DEFAULT_SYNC_TIMEZONE
    if not is_valid_cron_string(cron):
        raise SettingsError(f"{SYNC_SCHEDULE} must be a cron expression such as {DEFAULT_SYNC_SCHEDULE!r}, "
                            f"not {cron!r}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"{SYNC_TIMEZONE} must be an IANA time zone such as 'Australia/Sydney', "
                            f"not {timezone!r}") from None
    return cron, timezone


def webhook_quiet_seconds(environ=os.environ) -> int:
    return whole_number(environ, WEBHOOK_QUIET_SECONDS, DEFAULT_WEBHOOK_QUIET_SECONDS, unit="seconds")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def local_dir() -> Path:
    return Path(os.environ.get("XERO_ELT_LOCAL_DIR", REPO_ROOT / ".local")).resolve()


@dataclass(frozen=True)
class DemoWorld:
    """What `xero-elt demo` set up last: its database (no credentials) and its sandbox's data set,
    so that `xero-elt ui` can bring the same local Xero back (orchestration/demo.py)."""

    database: str  # host:port/database
    seed: int
    tenants: int
    invoices: int

    def save(self) -> None:
        (local_dir() / DEMO_WORLD_FILE).write_text(json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def load(cls) -> DemoWorld | None:
        path = local_dir() / DEMO_WORLD_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


def is_demo_database(db: DatabaseUrl, *, embedded: bool) -> bool:
    """Whether `db` is the one the demo set up: the embedded one (the demo's default), or the one
    its last run named (a demo run with DATABASE_URL set)."""
    world = DemoWorld.load()
    return embedded or (world is not None and world.database == db.address)


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed `postgresql://` URL, with what dbt's profile and Dagster's storage need."""

    url: str

    @classmethod
    def parse(cls, value: str, variable: str = "DATABASE_URL") -> DatabaseUrl:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
            raise SettingsError(f"{variable} must be a postgresql:// URL, got scheme {parts.scheme!r}")
        if not parts.hostname:
            raise SettingsError(f"{variable} must name a host (postgresql://user@host:port/database)")
        if not parts.path.strip("/"):
            raise SettingsError(f"{variable} must name a database (…/database at the end)")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise SettingsError(f"{variable} has a malformed port: {exc}") from None
        scheme = "postgresql"
        return cls(urlunsplit((scheme, parts.netloc, parts.path, parts.query, "")))

    @property
    def _parts(self):
        return urlsplit(self.url)

    @property
    def host(self) -> str:
        return self._parts.hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._parts.port or 5432

    @property
    def user(self) -> str:
        return unquote(self._parts.username or "postgres")

    @property
    def password(self) -> str:
        return unquote(self._parts.password or "")

    @property
    def sslmode(self) -> str | None:
        return parse_qs(self._parts.query).get("sslmode", [None])[-1]

    @property
    def database(self) -> str:
        return self._parts.path.strip("/")

    @property
    def address(self) -> str:
        """host:port/database: which database, without credentials."""
        return f"{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> DatabaseUrl:
        p = self._parts
        return DatabaseUrl(urlunsplit((p.scheme, p.netloc, "/" + database, p.query, "")))

    def in_utc(self) -> DatabaseUrl:
        """The same URL with its sessions in UTC. Dagster's storage writes run timestamps with
        CURRENT_TIMESTAMP into `timestamp without time zone` and reads them back as UTC: on a
        server whose time zone is not UTC (an RDS parameter group, say) a run created a second ago
        looks hours old, and run monitoring fails it for "taking too long to start"."""
        p = self._parts
        if "options" in parse_qs(p.query):  # the operator's own session options stand
            return self
        query = "&".join(q for q in (p.query, "options=" + quote("-c timezone=UTC")) if q)
        return DatabaseUrl(urlunsplit((p.scheme, p.netloc, p.path, query, "")))

    def dbt_env(self) -> dict[str, str]:
        """dbt's profile reads its connection from these (decoded, unlike the URL)."""
        return {
            "DBT_PG_HOST": self.host,
            "DBT_PG_PORT": str(self.port),
            "DBT_PG_USER": self.user,
            "DBT_PG_PASSWORD": self.password,
            "DBT_PG_DATABASE": unquote(self.database),
            "DBT_PG_SSLMODE": self.sslmode or "prefer",
        }


def dbt_connection_env(environ=os.environ) -> dict[str, str]:
    """dbt's connection, derived from `DATABASE_URL`, for whichever process runs dbt (a Dagster
    run launched by the daemon or in a container has not been through `prepare_environment`)."""
    if not environ.get("DATABASE_URL"):
        raise SettingsError("DATABASE_URL is not set: dbt does not know which database to build")
    return DatabaseUrl.parse(environ["DATABASE_URL"]).dbt_env()


def ensure_database(admin: DatabaseUrl, name: str) -> None:
    """Create database `name` on `admin`'s server unless it exists."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin.url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def prepare_environment(environ: dict[str, str] | None = None, *, dagster: bool = True) -> DatabaseUrl:
    """Fill in the process environment for local runs; return the database to use.

    - `DATABASE_URL` unset: start (or reuse) the embedded PostgreSQL under `.local/` and create
      the `xero_elt` database on it (unless `XERO_ELT_EMBEDDED_POSTGRES=0`, as in the image:
      a deployment that forgot its database must fail, not quietly use a throwaway one).
    - With `dagster` (not needed by the OAuth service or migrations):
      `DAGSTER_HOME` unset: `.local/dagster` with the repository's `deploy/dagster.yaml`;
      Dagster's storage `DAGSTER_POSTGRES_URL`, by default database `<database>_dagster` on the
      same server.
    """
    env = os.environ if environ is None else environ
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)

    environ_database = env.get("DATABASE_URL") or None
    if environ_database:
        db = DatabaseUrl.parse(environ_database)
    elif env.get("XERO_ELT_EMBEDDED_POSTGRES", "1") == "0":
        raise SettingsError("DATABASE_URL is required (the embedded PostgreSQL is switched off by "
                            "XERO_ELT_EMBEDDED_POSTGRES=0)")
    else:
        from orchestration.local_postgres import LocalPostgres

        server = DatabaseUrl(LocalPostgres(local_dir()).ensure_running())
        ensure_database(server, "xero_elt")
        db = server.with_database("xero_elt")
        env["DATABASE_URL"] = db.url

    # The demo's database is the demo's world: use the demo's secrets (written by the demo) so the
    # UI's sensors and runs and later commands can read the tokens it stored.
    demo_env = local_dir() / DEMO_ENV_FILE
    if demo_env.exists() and is_demo_database(db, embedded=environ_database is None):
        for key, value in read_env_file(demo_env).items():
            env.setdefault(key, value)
    env.update(db.dbt_env())
    if dagster:
        _prepare_dagster(env, db)
    return db


def _prepare_dagster(env, db: DatabaseUrl) -> None:
    if not env.get("DAGSTER_POSTGRES_URL"):
        dagster_db = f"{db.database}_dagster"
        ensure_database(db, dagster_db)
        dagster_url = db.with_database(dagster_db)
    else:
        dagster_url = DatabaseUrl.parse(env["DAGSTER_POSTGRES_URL"], "DAGSTER_POSTGRES_URL")
    # dagster-postgres speaks psycopg2 (its NOTIFY is psycopg2-only); SQLAlchemy 2.1's default
    # driver for a bare postgresql:// is psycopg 3, so name the driver.
    env["DAGSTER_POSTGRES_URL"] = dagster_url.in_utc().url.replace("postgresql://",
                                                                   "postgresql+psycopg2://", 1)

    home = Path(env.setdefault("DAGSTER_HOME", str(local_dir() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(DAGSTER_YAML_TEMPLATE, home / "dagster.yaml")

    env.setdefault("DLT_DATA_DIR", str(local_dir() / "dlt"))
