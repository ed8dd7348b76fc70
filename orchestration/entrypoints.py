"""The image's commands: one image, one process per command (see the Dockerfile and compose.yaml).

    xero-elt migrate        the app schema, the deployment's logins, Dagster's storage; then exits
    xero-elt serve          the OAuth service
    xero-elt code-server    the Dagster code location over gRPC; the runs are launched in it
    xero-elt webserver      the Dagster UI
    xero-elt daemon         schedules, sensors, the run queue, run monitoring and retries
    xero-elt health [WHAT]  exit 0 when this container's process is healthy (the HEALTHCHECK)

Each prepares the environment as `xero-elt ui` does (orchestration.settings: telemetry off, Dagster's
storage URL with the psycopg2 driver and UTC sessions, dbt's connection from DATABASE_URL) and then
execs Dagster's own process, which so receives the container's signals itself. Nothing is written
under the code's folder: state goes to DAGSTER_HOME, DLT_DATA_DIR, DBT_TARGET_PATH, DBT_LOG_PATH and
TMPDIR, which the image points at a volume and /tmp.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

from orchestration.settings import (
    REPO_ROOT,
    TELEMETRY_OFF,
    DatabaseUrl,
    SettingsError,
    _prepare_dagster,
    local_dir,
    prepare_environment,
)

# When set (the image sets it), $DAGSTER_HOME/dagster.yaml is (re)written from this file at every
# start: DAGSTER_HOME is a writable volume that outlives images, and a copy made once (as locally)
# would keep an old image's instance settings. A deployment points it at its own instance file.
DAGSTER_YAML = "XERO_ELT_DAGSTER_YAML"
# HOST:PORT of `xero-elt code-server`, for the webserver and the daemon; unset: they load the code
# themselves (in a subprocess of their own, as `xero-elt ui` does).
CODE_SERVER = "XERO_ELT_CODE_SERVER"
CODE_SERVER_WORKSPACE = REPO_ROOT / "deploy" / "code_server_workspace.yaml"
LOCAL_WORKSPACE = REPO_ROOT / "workspace.yaml"
DEFINITIONS_MODULE = "orchestration.definitions"
# workspace.yaml's python_module gets its module's name: the code server serves under the same one,
# as schedules' and sensors' on/off state is keyed by it.
LOCATION_NAME = DEFINITIONS_MODULE

DEFAULT_PORTS = {"service": 8080, "webserver": 3000, "code-server": 4000}
HEALTH_TARGETS = ("service", "webserver", "daemon", "code-server")
HEALTH_TIMEOUT_SECONDS = 5.0


# ---------------------------------------------------------------------- environment
def install_instance_yaml(env: MutableMapping[str, str]) -> None:
    source = env.get(DAGSTER_YAML, "").strip()
    if not source:
        return
    try:
        text = Path(source).read_text()
    except OSError as exc:
        raise SettingsError(f"{DAGSTER_YAML}={source}: cannot read that instance file ({exc})") from None
    home = Path(env.setdefault("DAGSTER_HOME", str(local_dir() / "dagster")))
    target = home / "dagster.yaml"
    if target.exists() and target.read_text() == text:
        return
    home.mkdir(parents=True, exist_ok=True)
    # Atomic: the webserver, daemon and code server start together on one shared volume.
    partial = home / f".dagster.yaml.{os.getpid()}"
    partial.write_text(text)
    os.replace(partial, target)


def prepare_dagster(env: MutableMapping[str, str], *, user_code: bool) -> None:
    """The environment of a Dagster process. Without `user_code` (the webserver and daemon of a
    separate code server) DAGSTER_POSTGRES_URL alone will do: they never run the product's code,
    so they need neither the app's database nor its secrets."""
    install_instance_yaml(env)
    if user_code or env.get("DATABASE_URL") or not env.get("DAGSTER_POSTGRES_URL"):
        prepare_environment(env)
        return
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)
    # Given DAGSTER_POSTGRES_URL, the database argument is unused: only the URL is normalised.
    _prepare_dagster(env, DatabaseUrl.parse(env["DAGSTER_POSTGRES_URL"], "DAGSTER_POSTGRES_URL"))


def workspace(env: MutableMapping[str, str], code_server: str | None) -> Path:
    """The workspace file of the webserver or daemon: the code server's, given one, else the local
    one (the code loaded in a subprocess of their own, which then needs the product's settings)."""
    target = (code_server or env.get(CODE_SERVER, "")).strip()
    if not target:
        return LOCAL_WORKSPACE
    host, port = parse_host_port(target, DEFAULT_PORTS["code-server"])
    # Read by deploy/code_server_workspace.yaml.
    env["XERO_ELT_CODE_SERVER_HOST"] = host
    env["XERO_ELT_CODE_SERVER_PORT"] = str(port)
    return CODE_SERVER_WORKSPACE


def parse_host_port(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    if not host or (port and not port.isdigit()):
        raise SettingsError(f"{CODE_SERVER} / --code-server must be HOST or HOST:PORT, not {value!r}")
    return host, int(port) if port else default_port


def _exec_dagster(program: str, args: list[str]) -> int:
    executable = str(Path(sys.executable).with_name(program))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(executable, [executable, *args])  # noqa: S606 - Dagster's process replaces this one
    return 0  # not reached


# ---------------------------------------------------------------------- the commands
def code_server(host: str, port: int) -> int:
    prepare_dagster(os.environ, user_code=True)
    print(f"Dagster code server on {host}:{port} (location {LOCATION_NAME})", flush=True)
    # The run workers it starts use this interpreter's `python -m dagster`, whatever is on PATH.
    return _exec_dagster("dagster", ["api", "grpc", "-m", DEFINITIONS_MODULE, "-d", str(REPO_ROOT),
                                     "-h", host, "-p", str(port), "--location-name", LOCATION_NAME,
                                     "--use-python-environment-entry-point"])


def webserver(host: str, port: int, code_server_address: str | None) -> int:
    workspace_file = workspace(os.environ, code_server_address)
    prepare_dagster(os.environ, user_code=workspace_file == LOCAL_WORKSPACE)
    print(f"Dagster UI on http://{host}:{port} (instance: {os.environ['DAGSTER_HOME']})", flush=True)
    return _exec_dagster("dagster-webserver", ["-h", host, "-p", str(port), "-w", str(workspace_file)])


def daemon(code_server_address: str | None) -> int:
    workspace_file = workspace(os.environ, code_server_address)
    prepare_dagster(os.environ, user_code=workspace_file == LOCAL_WORKSPACE)
    return _exec_dagster("dagster-daemon", ["run", "-w", str(workspace_file)])


def migrate() -> int:
    """Everything a new image needs before its processes start; safe to run again."""
    from dagster import DagsterInstance

    from oauth_service import migrations

    env = os.environ
    install_instance_yaml(env)
    explicit_dagster_url = env.get("DAGSTER_POSTGRES_URL", "").strip()
    db = prepare_environment(env)  # creates the default <database>_dagster
    migrations.upgrade(db.url)
    print(f"app schema revision: {migrations.current(db.url)}", flush=True)
    for line in ensure_logins(db, env):
        print(line, flush=True)
    if explicit_dagster_url:
        line = ensure_dagster_storage(db, DatabaseUrl.parse(explicit_dagster_url, "DAGSTER_POSTGRES_URL"))
        print(line, flush=True)
    with DagsterInstance.get() as instance:
        instance.upgrade()
    print(f"Dagster storage up to date (instance: {env['DAGSTER_HOME']})", flush=True)
    return 0


# The logins a deployment names, each with its one group role (None: Dagster's, a member of nothing).
DEPLOYMENT_LOGINS = (
    ("APP_DATABASE_URL", "service login", "xero_elt_app"),
    ("PIPELINE_DATABASE_URL", "pipeline login", "xero_elt_pipeline"),
    ("DAGSTER_POSTGRES_URL", "Dagster storage login", None),
)


def ensure_logins(owner: DatabaseUrl, env: Mapping[str, str]) -> Iterator[str]:
    """Each login a URL of DEPLOYMENT_LOGINS names on the owner's server, made what it is for with
    the URL's password (`oauth_service.db.ensure_login`: created, or its password set, its membership
    checked), so that a fresh stack needs no manual step and a rotated secret reaches the database at
    the next migrate. Yields one line per login saying what was done: never its password. The owner's
    own login (DATABASE_URL, the master) is never altered; another server's logins are its own."""
    from oauth_service.db import ensure_login

    named = [(variable, label, group, DatabaseUrl.parse(env[variable], variable))
             for variable, label, group in DEPLOYMENT_LOGINS if env.get(variable, "").strip()]
    by_user: dict[str, str] = {}
    for variable, _, _, login in named:  # checked before any change
        if login.user != owner.user and by_user.setdefault(login.user, variable) != variable:
            raise SettingsError(f"{by_user[login.user]} and {variable} both log in as {login.user!r}: each "
                                "needs a login of its own (each is a member of one group role only)")
    for variable, label, group, login in named:
        where = f"{label} {login.user} ({variable})"
        if (login.host, login.port) != (owner.host, owner.port):
            yield f"{where}: on another server ({login.host}:{login.port}), left to its administrator"
        elif login.user == owner.user:
            yield f"{where}: the migrating login itself, left as it is"
        elif group == "xero_elt_pipeline" and login.database != owner.database:
            raise SettingsError(f"{variable} names database {login.database!r}, not DATABASE_URL's "
                                f"{owner.database!r}: the pipeline's login acts as {group} in that one only")
        else:
            yield f"{where}: {ensure_login(owner.url, login.user, login.password, member_of=group)}"


def ensure_dagster_storage(owner: DatabaseUrl, dagster: DatabaseUrl) -> str:
    """Dagster's storage database (DAGSTER_POSTGRES_URL's), created on the owner's server when missing.
    A login of its own gets CONNECT on it and USAGE and CREATE on its schema public: dagster-postgres
    creates its tables itself, as that login, which so owns them. (Not the database's ownership: on
    PostgreSQL 15 giving it away needs membership in the new owner, which RDS's master has not.)
    Tables the migrating login made there (Dagster's storage migrated as the owner, before it had a
    login of its own) are handed over to the login; those of any other role are refused."""
    import psycopg
    from psycopg import sql

    name = dagster.database
    where = f"Dagster storage database {name}"
    if (dagster.host, dagster.port) != (owner.host, owner.port):
        return f"{where}: on another server ({dagster.host}:{dagster.port}), left to its administrator"
    if dagster.user != owner.user and name == owner.database:
        raise SettingsError(f"DAGSTER_POSTGRES_URL names the app database {name!r} with login "
                            f"{dagster.user!r}: give Dagster's storage a database of its own")
    with psycopg.connect(owner.url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    done = f"{where}: {'exists' if exists else 'created'}"
    if dagster.user == owner.user:
        return done
    login = sql.Identifier(dagster.user)
    with psycopg.connect(owner.with_database(name).url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), login))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(login))
        # Sequences of serial columns follow their tables.
        foreign = conn.execute(
            "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner) = current_user FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1",
            (dagster.user,)).fetchall()
        others = [table for table, mine in foreign if not mine]
        if others:
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise SettingsError(
                f"{where} holds {len(others)} tables of other roles than its login {dagster.user!r} and "
                f"the migrating one ({listed}), which Dagster could not use: make {dagster.user!r} their "
                "owner or start Dagster's storage from an empty database")
        if foreign:
            _hand_over(conn, [table for table, _ in foreign], dagster.user)
            done += f", its {len(foreign)} tables handed over to {dagster.user}"
    return f"{done}, {dagster.user} may create its tables in schema public"


def _hand_over(conn, tables: list[str], login: str) -> None:
    """ALTER TABLE ... OWNER TO `login` for tables the connected login owns. That needs membership in
    `login` (from PostgreSQL 16: the right to SET ROLE to it, which its creator's automatic ADMIN grant
    lacks), which a CREATEROLE master may grant itself: only for this transaction, never committed."""
    from psycopg import sql

    right = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    with conn.transaction():
        [member] = conn.execute("SELECT pg_has_role(current_user, %s, %s)", (login, right)).fetchone()
        if not member:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(login)))
        for table in tables:  # regclass text: already quoted where needed
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.SQL(table), sql.Identifier(login)))
        if not member:
            conn.execute(sql.SQL("REVOKE {} FROM CURRENT_USER").format(sql.Identifier(login)))


# ---------------------------------------------------------------------- health
def role_from_cmdline(argv: list[str]) -> tuple[str, int | None] | None:
    """(what, port) of a container's main process from its command line: `xero-elt serve|webserver|
    daemon|code-server …` (also behind an init such as `docker run --init`), or the Dagster process
    it exec'd. None when it is none of these."""
    names = [os.path.basename(arg) for arg in argv]

    def port_after(flags: tuple[str, ...], default: int | None) -> int | None:
        for i, arg in enumerate(argv):
            for flag in flags:
                if arg == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                    return int(argv[i + 1])
                if arg.startswith(flag + "=") and arg[len(flag) + 1:].isdigit():
                    return int(arg[len(flag) + 1:])
        return default

    if "xero-elt" in names:
        i = names.index("xero-elt")
        command = argv[i + 1] if i + 1 < len(argv) else ""
        role = {"serve": "service"}.get(command, command)
        if role in HEALTH_TARGETS:
            return role, port_after(("--port",), DEFAULT_PORTS.get(role))
        return None
    if "dagster-webserver" in names:
        return "webserver", port_after(("-p", "--port"), DEFAULT_PORTS["webserver"])
    if "dagster-daemon" in names:
        return "daemon", None
    i = names.index("dagster") if "dagster" in names else -1
    if i >= 0 and argv[i + 1:i + 3] == ["api", "grpc"]:
        return "code-server", port_after(("-p", "--port"), DEFAULT_PORTS["code-server"])
    return None


def _main_process_cmdline() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _http_ok(url: str) -> tuple[bool, str]:
    """(answered 200, what it answered)."""
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_SECONDS) as response:  # noqa: S310 - http://host
            return response.status == 200, response.read(4096).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {exc.read(4096).decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:
        return False, f"unreachable: {exc}"


def _code_server_ok(host: str, port: int) -> tuple[bool, str]:
    # grpc's own health service, as `dagster api grpc-health-check` asks it, without importing
    # Dagster (about a second of CPU at every check).
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=HEALTH_TIMEOUT_SECONDS)
    except grpc.RpcError as exc:
        return False, f"unreachable: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status == "SERVING", status


def _daemon_ok() -> tuple[bool, str]:
    """Every daemon the instance needs has sent a heartbeat recently (as `dagster-daemon
    liveness-check`: DAGSTER_DAEMON_HEARTBEAT_TOLERANCE, else Dagster's default)."""
    from dagster import DagsterInstance
    from dagster._daemon.controller import DEFAULT_DAEMON_HEARTBEAT_TOLERANCE_SECONDS, get_daemon_statuses

    prepare_dagster(os.environ, user_code=False)
    tolerance = int(os.environ.get("DAGSTER_DAEMON_HEARTBEAT_TOLERANCE")
                    or DEFAULT_DAEMON_HEARTBEAT_TOLERANCE_SECONDS)
    with DagsterInstance.get() as instance:
        statuses = get_daemon_statuses(instance, instance.get_required_daemon_types(),
                                       heartbeat_tolerance_seconds=tolerance, ignore_errors=True)
    stale = sorted(name for name, status in statuses.items() if not status.healthy)
    return not stale, f"no recent heartbeat from {', '.join(stale)}" if stale else "all daemons live"


def health(what: str | None, host: str, port: int | None) -> int:
    if what is None:
        detected = role_from_cmdline(_main_process_cmdline())
        if detected is None:
            print("xero-elt health: cannot tell what this container runs; name it: "
                  f"xero-elt health {{{','.join(HEALTH_TARGETS)}}}", file=sys.stderr)
            return 1
        what, detected_port = detected
        port = port or detected_port
    port = port or DEFAULT_PORTS.get(what)
    if what == "service":
        ok, detail = _http_ok(f"http://{host}:{port}/healthz")
    elif what == "webserver":
        ok, detail = _http_ok(f"http://{host}:{port}/server_info")
        if ok:
            try:
                detail = "dagster " + json.loads(detail)["dagster_version"]
            except (ValueError, KeyError, TypeError):
                ok, detail = False, f"not a Dagster webserver's answer: {detail[:200]}"
    elif what == "code-server":
        ok, detail = _code_server_ok(host, port)
    else:
        ok, detail = _daemon_ok()
    print(f"{what}: {'healthy' if ok else 'UNHEALTHY'} ({detail})")
    return 0 if ok else 1
