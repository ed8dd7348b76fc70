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

The pipeline's login (dlt, dbt, the orchestration: migration 0006) is `create_login(url, name,
member_of=PIPELINE_ROLE)`: NOINHERIT, so as itself it may do nothing, and its sessions in this database
start as `xero_elt_pipeline` (`ALTER ROLE … IN DATABASE … SET role`, applied by the server whatever the
client: dlt, dbt, psycopg), so every object dlt and dbt create is owned by the group role, never by
the login.

`ensure_login(url, name, password, member_of=...)` is the idempotent form for the logins a deployment
names with their passwords (from their secrets): `xero-elt migrate` creates each, or sets its password
and checks it is a member of its one group role and of nothing else; `member_of=None` is a plain login
(Dagster's storage). `create_login` and it share one CREATE ROLE.

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
# Owns raw_xero, staging and analytics; reads app.xero_connections (id, tenant_id, tenant_name) only.
PIPELINE_ROLE = "xero_elt_pipeline"
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
def scram_sha256_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (so the password itself is never
    sent to the server, nor can it appear in the server's statement log). A random salt by default."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_sha256_matches(password: str, verifier: str | None) -> bool:
    """Whether `verifier` (pg_authid.rolpassword) is a SCRAM-SHA-256 verifier of `password`."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$\S+", verifier or "")
    if not match:
        return False  # none, md5 or unknown: not ours to compare
    expected = scram_sha256_verifier(password, iterations=int(match[1]), salt=base64.b64decode(match[2]))
    return hmac.compare_digest(expected, verifier)


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


def create_login(
    database_url: str, name: str, *, member_of: str = APP_ROLE, password: str | None = None
) -> str:
    """Create LOGIN role `name`, member of the group role `member_of` (one of `APP_ROLE`,
    `ANALYST_ROLE`, `KPI_READER_ROLE`, `PIPELINE_ROLE`: the migrations create them) and of nothing
    else, owning nothing, and return the postgresql:// URL that uses it (same host, port and database
    as `database_url`). A pipeline login is NOINHERIT and acts as the group role in that database (see
    the module docstring). `password`: the login's (e.g. from its secret); None: a random one.

    `database_url` is the owner's (DATABASE_URL): it needs CREATEROLE (or superuser). The password is
    sent to PostgreSQL only as a SCRAM-SHA-256 verifier and is only in the returned URL: never logged.
    """
    import psycopg

    from oauth_service.settings import SettingsError

    _check_login_name(name, member_of)
    password = password or secrets.token_urlsafe(32)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn, conn.transaction():
        if _role(conn, name) is not None:
            raise SettingsError(f"role {name!r} already exists; choose another name (or drop it first)")
        _create_login(conn, name, password, member_of)
    parts = urlsplit(libpq_url(database_url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(name, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, parts.fragment))


def ensure_login(database_url: str, name: str, password: str, *, member_of: str | None) -> str:
    """Make LOGIN role `name` what a deployment names it for, and say what was done: "created" (as
    `create_login` with `password`), "unchanged", or the changes made to the existing role ("password
    set", ...). `member_of`: its one group role, as for `create_login`; None: a plain login member of
    nothing (Dagster's storage login). Idempotent and rotation-friendly: an existing login gets
    `password` (unless its stored verifier already is that password's: readable by a superuser only),
    its missing membership, its INHERIT flag, and for a pipeline login its role setting in this
    database. An empty `password` leaves an existing login's as it is.

    Refused (SettingsError), changing nothing: a group role, the login `database_url` connects as
    (the owner or master is never altered here), a role that cannot log in or holds any of SUPERUSER,
    CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS, a member of any other role (which to revoke is not a
    guess to make), and a missing login without a password.
    """
    import psycopg
    from psycopg import sql

    from oauth_service.settings import SettingsError

    _check_login_name(name, member_of)
    pipeline = member_of == PIPELINE_ROLE
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn, conn.transaction():
        if name in conn.execute("SELECT current_user, session_user").fetchone():
            raise SettingsError(f"login {name!r} is the one this connects as: it is never altered here")
        role = _role(conn, name)
        if role is None:
            if not password:
                raise SettingsError(
                    f"login {name!r} does not exist: give its URL a password to have it created"
                )
            _create_login(conn, name, password, member_of)
            return "created"
        if not role["rolcanlogin"]:
            raise SettingsError(f"role {name!r} exists but is no login (a group role?): refused")
        powers = [attribute.upper() for attribute in _POWERS if role[f"rol{attribute}"]]
        if powers:
            raise SettingsError(f"login {name!r} has {', '.join(powers)}: a deployment's login must have "
                                "none of these; refused")
        groups = set(role["groups"])
        wanted = {member_of} if member_of else set()
        if groups - wanted:
            raise SettingsError(f"login {name!r} is a member of {', '.join(sorted(groups - wanted))}, not of "
                                f"{member_of or 'no role'} alone: revoke that first; refused")
        ident = sql.Identifier(name)
        changes = []
        if password and not scram_sha256_matches(password, _stored_verifier(conn, name)):
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                ident, sql.Literal(scram_sha256_verifier(password))))
            changes.append("password set")
        if member_of and member_of not in groups:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), ident))
            changes.append(f"made a member of {member_of}")
        if role["rolinherit"] == pipeline:  # the pipeline's login NOINHERIT, every other INHERIT
            inherit = "NOINHERIT" if pipeline else "INHERIT"
            conn.execute(sql.SQL("ALTER ROLE {} {}").format(ident, sql.SQL(inherit)))
            changes.append(f"made {inherit}")
        if pipeline and f"role={PIPELINE_ROLE}" not in role["settings"]:
            _act_as_pipeline_here(conn, name)
            changes.append(f"set to act as {PIPELINE_ROLE} in {conn.info.dbname}")
    if changes:
        log.info("login role %s: %s", name, ", ".join(changes))
    return ", ".join(changes) or "unchanged"


_POWERS = ("super", "createrole", "createdb", "replication", "bypassrls")


def _check_login_name(name: str, member_of: str | None) -> None:
    from oauth_service.settings import SettingsError

    groups = (APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE, PIPELINE_ROLE)  # read here: tests may patch APP_ROLE
    if member_of is not None and member_of not in groups:
        raise SettingsError(f"a login may only be made a member of one of {', '.join(groups)}")
    if name in groups:
        raise SettingsError(f"{name} is a group role, not a login: give the login another name")
    if not _ROLE_NAME.match(name):
        raise SettingsError(
            f"role name {name!r} must be lowercase letters, digits and underscores (at most 63), "
            "starting with a letter or underscore"
        )


def _role(conn: Any, name: str) -> dict[str, Any] | None:
    """Role `name`'s attributes, the roles it is a member of, and its settings in this database."""
    row = conn.execute(
        "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolcreaterole, r.rolcreatedb, "
        "r.rolreplication, r.rolbypassrls, "
        "ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid), "
        "ARRAY(SELECT unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setrole = r.oid "
        "AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())) "
        "FROM pg_roles r WHERE r.rolname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    keys = ("rolcanlogin", "rolinherit", "rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication",
            "rolbypassrls", "groups", "settings")
    return dict(zip(keys, row, strict=True))


def _stored_verifier(conn: Any, name: str) -> str | None:
    """The login's stored password verifier, or None where pg_authid is not readable (any login but a
    superuser: e.g. RDS's master, which then sets the password every time)."""
    if not conn.execute("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')").fetchone()[0]:
        return None
    row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
    return row[0] if row else None


def _create_login(conn: Any, name: str, password: str, member_of: str | None) -> None:
    """CREATE ROLE `name` LOGIN with `password` (as a verifier), member of `member_of` alone (None: of
    nothing); a pipeline login NOINHERIT, acting as its group role in this database."""
    from psycopg import sql

    from oauth_service.settings import SettingsError

    if member_of is not None and _role(conn, member_of) is None:
        raise SettingsError(
            f"role {member_of} does not exist: apply the migrations first (xero-elt db upgrade)"
        )
    # The pipeline's objects must belong to its group role, whatever login creates them.
    pipeline = member_of == PIPELINE_ROLE
    conn.execute(
        sql.SQL(
            "CREATE ROLE {} LOGIN {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "PASSWORD {}{}"
        ).format(
            sql.Identifier(name),
            sql.SQL("NOINHERIT" if pipeline else "INHERIT"),
            sql.Literal(scram_sha256_verifier(password)),
            sql.SQL(" IN ROLE {}").format(sql.Identifier(member_of)) if member_of else sql.SQL(""),
        )
    )
    if pipeline:
        _act_as_pipeline_here(conn, name)
    log.info("created login role %s (member of %s)", name, member_of or "no role")


def _act_as_pipeline_here(conn: Any, name: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET role = {}").format(
        sql.Identifier(name), sql.Identifier(conn.info.dbname), sql.Literal(PIPELINE_ROLE)))


def drop_app_login(database_url: str, name: str) -> None:
    """Drop login role `name` (one made by `create_app_login`, `create_analyst_login` or `create_login`)
    if it exists, ending its sessions first so that none keeps running as a role that no longer exists.
    The group roles are refused. `database_url` is the owner's."""
    import psycopg
    from psycopg import sql

    from oauth_service.settings import SettingsError

    if name == APP_ROLE:
        raise SettingsError(f"{APP_ROLE} is the application role, not a login: it is never dropped here")
    if name in (ANALYST_ROLE, KPI_READER_ROLE, PIPELINE_ROLE):
        raise SettingsError(f"{name} is a group role, not a login: it is never dropped here")
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        # The timeout (ms) waits for each session to have ended, not just been signalled.
        conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        if conn.info.server_version >= 160000:
            _take_over_grants_of(conn, name)
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    log.info("dropped login role %s", name)


def _take_over_grants_of(conn, name: str) -> None:
    """From PostgreSQL 16 a role that granted memberships (a migrating login: 0003-0006 grant the group
    roles to each other) cannot be dropped while they stand. They are cluster-wide and other databases
    rely on them: each is granted again, with its options, by the connected login, then the dropped
    login's grant is revoked."""
    from psycopg import sql

    grants = conn.execute(
        "SELECT r.rolname, m.rolname, a.admin_option, a.inherit_option, a.set_option "
        "FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
        "WHERE a.grantor = (SELECT oid FROM pg_roles WHERE rolname = %s) AND m.rolname <> %s",
        (name, name)).fetchall()
    for role, member, admin, inherit, may_set in grants:
        options = sql.SQL(", ").join(sql.SQL(f"{option} {'TRUE' if on else 'FALSE'}") for option, on in
                                     (("ADMIN", admin), ("INHERIT", inherit), ("SET", may_set)))
        conn.execute(sql.SQL("GRANT {} TO {} WITH {}").format(sql.Identifier(role), sql.Identifier(member),
                                                              options))
        conn.execute(sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
            sql.Identifier(role), sql.Identifier(member), sql.Identifier(name)))
