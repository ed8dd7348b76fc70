"""Database engines for the app schema (SQLAlchemy 2 on psycopg 3), and least privilege.

`app_engine(settings)` is THE way to get an engine for the app schema at run time (the service, the
token vault, and through `TokenVault(...).engine` the orchestration's audit writes):

- `APP_DATABASE_URL` set: that login is used. It must be a dedicated LOGIN role, member of the NOLOGIN
  group role `xero_elt_app` (SELECT/INSERT/UPDATE on connections, states and webhook events, DELETE on
  states only; INSERT on the audit log, and SELECT on its `id`, `action` and `record_id` only: see
  migration 0002) and owner of nothing. A connection is refused when the login
  is a superuser or may act as the owner of `app.audit_log` (it could then disable its triggers).
  Create one with `python -m oauth_service create-app-login NAME` (`create_app_login`); `drop_app_login`
  ends its sessions and drops it.
- unset (allowed for the pipeline's vault and in DEMO_MODE; the HTTP service refuses to start without
  it, see `Settings.rule_problems`): `DATABASE_URL` (the schema owner) is used, and every new connection
  runs `SET ROLE xero_elt_app`, so that ordinary statements run with the application role's privileges
  (defence in depth only: the session could `RESET ROLE`). When the role is missing or cannot be
  assumed the connection is refused outside DEMO_MODE, rather than silently keep the owner's rights.
  (Migration 0003 lets the login that applied the migrations assume it, e.g. a CREATEROLE owner.)
  Outside DEMO_MODE one warning per process says to set APP_DATABASE_URL.

Read-only logins for people: `python -m oauth_service create-analyst-login NAME` (`create_analyst_login`)
makes a login in `xero_elt_analyst`, which may only SELECT the tables and views of schema `analytics`
(migration 0004); `create_login(url, name, member_of=...)` is the general form, and `drop_app_login`
drops any of these logins.

Migrations (`oauth_service.migrations`) always use `make_engine(DATABASE_URL)`: the owner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine, event

if TYPE_CHECKING:
    from oauth_service.settings import Settings

log = logging.getLogger("oauth_service.db")

APP_ROLE = "xero_elt_app"
# Read-only group roles (migration 0004): SELECT on schema `analytics`; USAGE on it only (dbt grants
# SELECT on analytics.kpi_monthly).
ANALYST_ROLE = "xero_elt_analyst"
KPI_READER_ROLE = "xero_elt_kpi_reader"
_LEAST_PRIVILEGE_WARNED = False
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://…` (or `postgres://…`) → `postgresql+psycopg://…` (psycopg 3)."""
    parts = urlsplit(database_url)
    scheme = parts.scheme
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        scheme = "postgresql+psycopg"
    elif scheme != "postgresql+psycopg":
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def libpq_url(database_url: str) -> str:
    """`postgresql+psycopg://…` and friends → `postgresql://…` (what psycopg.connect accepts)."""
    parts = urlsplit(sqlalchemy_url(database_url))
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def make_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 20, **kwargs) -> Engine:
    """An engine on `database_url` using psycopg 3, with pre-ping and a bounded pool. Connects as the
    URL's login with no role change: for migrations and operator commands. The app uses `app_engine`."""
    kwargs.setdefault("pool_timeout", 30)
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        **kwargs,
    )


def app_engine(settings: Settings, *, pool_size: int = 10, max_overflow: int = 20, **kwargs) -> Engine:
    """The engine the service and the token vault use for the app schema (see the module docstring)."""
    if settings.app_database_url:
        engine = make_engine(
            settings.app_database_url, pool_size=pool_size, max_overflow=max_overflow, **kwargs
        )
        event.listen(engine, "connect", _check_dedicated_login)
        return engine
    _warn_no_app_login(settings)
    engine = make_engine(settings.database_url, pool_size=pool_size, max_overflow=max_overflow, **kwargs)
    demo = settings.demo_mode

    def assume_app_role(dbapi_connection: Any, _record: Any) -> None:
        _assume_app_role(dbapi_connection, demo=demo)

    event.listen(engine, "connect", assume_app_role)
    return engine


def _warn_no_app_login(settings: Settings) -> None:
    global _LEAST_PRIVILEGE_WARNED
    if settings.demo_mode or _LEAST_PRIVILEGE_WARNED:
        return
    _LEAST_PRIVILEGE_WARNED = True
    log.warning(
        "APP_DATABASE_URL is unset: the OAuth service and token vault connect with DATABASE_URL (the "
        "app schema's owner) and only `SET ROLE %s` limits them. For real least privilege set "
        "APP_DATABASE_URL to a dedicated login (python -m oauth_service create-app-login NAME).",
        APP_ROLE,
    )


def _assume_app_role(dbapi_connection: Any, *, demo: bool) -> None:
    """On each new connection: `SET ROLE xero_elt_app`. When that is impossible the connection would
    keep the owner's rights: refused outside DEMO_MODE, a warning in it."""
    from oauth_service.settings import SettingsError

    cur = dbapi_connection.cursor()
    try:
        row = cur.execute(
            "SELECT pg_has_role(current_user, r.oid, 'MEMBER') FROM pg_roles r WHERE r.rolname = %s",
            (APP_ROLE,),
        ).fetchone()
        why = "it does not exist" if row is None else "this login is not a member"
        if row and row[0]:
            try:
                cur.execute(f"SET ROLE {APP_ROLE}")
                dbapi_connection.commit()  # a session-level SET ROLE survives only a committed transaction
                return
            except Exception as exc:  # noqa: BLE001 - e.g. PostgreSQL 16 membership without SET option
                dbapi_connection.rollback()
                why = f"SET ROLE was refused ({type(exc).__name__})"
        dbapi_connection.commit()
    finally:
        cur.close()
    if demo:
        log.warning("role %s unusable (%s): the demo runs with DATABASE_URL's own privileges", APP_ROLE, why)
        return
    dbapi_connection.close()
    raise SettingsError(
        f"role {APP_ROLE} cannot be assumed ({why}), so this connection would keep the rights of "
        "DATABASE_URL (the app schema's owner). Apply the migrations as a login that may create roles "
        "(xero-elt db upgrade), or set APP_DATABASE_URL to a dedicated login (python -m oauth_service "
        "create-app-login NAME)."
    )


def _check_dedicated_login(dbapi_connection: Any, _record: Any) -> None:
    """APP_DATABASE_URL must not be a superuser nor able to act as the audit log's owner."""
    from oauth_service.settings import SettingsError

    cur = dbapi_connection.cursor()
    try:
        row = cur.execute(
            "SELECT r.rolsuper, COALESCE((SELECT pg_has_role(current_user, c.relowner, 'USAGE') "
            "FROM pg_class c WHERE c.oid = to_regclass('app.audit_log')), false), current_user "
            "FROM pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
        dbapi_connection.commit()
    finally:
        cur.close()
    if row and (row[0] or row[1]):
        dbapi_connection.close()
        raise SettingsError(
            f"APP_DATABASE_URL logs in as {row[2]!r}, which is a superuser or may act as the owner of "
            f"app.audit_log: it must be a dedicated login, member of {APP_ROLE} and owner of nothing "
            "(python -m oauth_service create-app-login NAME)"
        )


# ---------------------------------------------------------------------- dedicated login
def scram_sha256_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (so the password itself is never
    sent to the server, nor can it appear in the server's statement log)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def create_app_login(database_url: str, name: str) -> str:
    """Create LOGIN role `name` with a random password, member of `xero_elt_app`, owning nothing, and
    return the APP_DATABASE_URL that uses it (same host, port and database as `database_url`).

    `database_url` is the owner's (DATABASE_URL): it needs CREATEROLE (or superuser) and the migrations
    must have created `xero_elt_app`. The password is only in the returned URL: never logged.
    """
    return create_login(database_url, name, member_of=APP_ROLE)


def create_analyst_login(database_url: str, name: str) -> str:
    """Create LOGIN role `name` with a random password, member of `xero_elt_analyst` (SELECT on schema
    `analytics` only: migration 0004), owning nothing, and return the URL that uses it (printed as
    ANALYST_DATABASE_URL by `python -m oauth_service create-analyst-login NAME`). As `create_app_login`."""
    return create_login(database_url, name, member_of=ANALYST_ROLE)


def create_login(database_url: str, name: str, *, member_of: str = APP_ROLE) -> str:
    """Create LOGIN role `name` with a random password, member of the group role `member_of` (one of
    `APP_ROLE`, `ANALYST_ROLE`, `KPI_READER_ROLE`: the migrations create them) and of nothing else,
    owning nothing, and return the postgresql:// URL that uses it (same host, port and database as
    `database_url`).

    `database_url` is the owner's (DATABASE_URL): it needs CREATEROLE (or superuser). The password is
    sent to PostgreSQL only as a SCRAM-SHA-256 verifier and is only in the returned URL: never logged.
    """
    import psycopg
    from psycopg import sql

    from oauth_service.settings import SettingsError

    groups = (APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE)  # read here: tests may patch APP_ROLE
    if member_of not in groups:
        raise SettingsError(f"a login may only be made a member of one of {', '.join(groups)}")
    if not _ROLE_NAME.match(name):
        raise SettingsError(
            f"role name {name!r} must be lowercase letters, digits and underscores (at most 63), "
            "starting with a letter or underscore"
        )
    password = secrets.token_urlsafe(32)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (member_of,)).fetchone() is None:
            raise SettingsError(
                f"role {member_of} does not exist: apply the migrations first (xero-elt db upgrade)"
            )
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None:
            raise SettingsError(f"role {name!r} already exists; choose another name (or drop it first)")
        conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                "PASSWORD {} IN ROLE {}"
            ).format(
                sql.Identifier(name), sql.Literal(scram_sha256_verifier(password)), sql.Identifier(member_of)
            )
        )
    log.info("created login role %s (member of %s)", name, member_of)
    parts = urlsplit(libpq_url(database_url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(name, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, parts.fragment))


def drop_app_login(database_url: str, name: str) -> None:
    """Drop login role `name` (one made by `create_app_login`, `create_analyst_login` or `create_login`)
    if it exists, ending its sessions first so that none keeps running as a role that no longer exists.
    The group roles are refused. `database_url` is the owner's."""
    import psycopg
    from psycopg import sql

    from oauth_service.settings import SettingsError

    if name == APP_ROLE:
        raise SettingsError(f"{APP_ROLE} is the application role, not a login: it is never dropped here")
    if name in (ANALYST_ROLE, KPI_READER_ROLE):
        raise SettingsError(f"{name} is a group role, not a login: it is never dropped here")
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        # The timeout (ms) waits for each session to have ended, not just been signalled.
        conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    log.info("dropped login role %s", name)
