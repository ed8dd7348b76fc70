"""The image (Dockerfile) and the one-machine stack (compose.yaml), checked without Docker.

Static: compose.yaml, the Dockerfiles, .dockerignore, .env.example and the lock files, parsed.

Live: the commands compose.yaml runs, run directly, each with the environment the image and compose
give its service and nothing else (the image's ENV and the service's `environment`, with hosts and
paths mapped onto this machine), from a copy of the code laid out as the Dockerfile copies it (with
the manifest built by the Dockerfile's own `dbt parse` line), against a throwaway database: migrate,
then the OAuth service, the code server, the webserver and the daemon, each until the health check
compose gives it passes.

The code is read-only to those processes, enforced: they run in a mount namespace of their own
(`unshare -m`, `-rm` when not root) where the copy, the venv and the interpreter are read-only bind
mounts, as Docker's read_only root makes them (refused even to root); without namespaces, and not
root, the copy is made unwritable. A probe checks that writing there really fails, and the copy's
tree is compared before and after all the processes ran.

DEPLOY_TEST_VENV=/path/to/venv runs the commands with another venv, e.g. one installed from
deploy/requirements.lock alone (`pip install --no-deps -r`, then `pip install --no-deps -e .`), as
the image's is.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

import psycopg
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg import sql

from orchestration.entrypoints import role_from_cmdline
from orchestration.settings import TELEMETRY_OFF, DatabaseUrl

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "oauth", "code-server", "webserver", "daemon")
LONG_RUNNING = ("postgres", "oauth", "code-server", "webserver", "daemon")
VENV_BIN = Path(os.environ.get("DEPLOY_TEST_VENV") or sys.prefix) / "bin"
SENSITIVE = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
REFERENCE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# ---------------------------------------------------------------------- parsing helpers
@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for args in self.all("ENV") for item in shlex.split(args))


def dockerfile_stages(path: Path) -> list[Stage]:
    """Instructions per stage: comment lines dropped (also inside a continued RUN, as Docker does),
    continuation lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in filter(str.strip, joined):
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def value(match: re.Match) -> str:
        found = variables.get(match["name"], "")
        if match["op"] in (":-", "-") and not found:
            return match["arg"]
        if match["op"] in (":?", "?") and not found:
            raise KeyError(f"{match['name']}: {match['arg']}")
        return found
    return REFERENCE.sub(value, text)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rules: the last pattern matching the path or one of its parent folders decides."""
    def glob(pattern: str) -> re.Pattern:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        return re.compile(regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")

    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = glob(pattern[1:] if negated else pattern)
        if any(regex.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def lock_names(path: Path) -> dict[str, str]:
    pins = [Requirement(line) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier) for r in pins}


STAGES = dockerfile_stages(REPO / "Dockerfile")
FINAL = STAGES[-1]


# ---------------------------------------------------------------------- compose.yaml
def test_compose_services_and_their_order():
    assert set(SERVICES) == {"postgres", "migrate", "oauth", "code-server", "webserver", "daemon"}
    conditions = {name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
                  for name, service in SERVICES.items()}
    assert conditions == {
        "postgres": {},
        "migrate": {"postgres": "service_healthy"},
        "oauth": {"postgres": "service_healthy", "migrate": "service_completed_successfully"},
        "code-server": {"postgres": "service_healthy", "migrate": "service_completed_successfully"},
        "webserver": {"migrate": "service_completed_successfully", "code-server": "service_healthy"},
        "daemon": {"migrate": "service_completed_successfully", "code-server": "service_healthy"},
    }
    assert SERVICES["migrate"]["restart"] == "no"  # one-shot: a restart loop would hide a failure
    assert SERVICES["migrate"]["command"] == ["xero-elt", "migrate"]


def test_compose_health_checks_check_what_each_service_runs():
    for name in LONG_RUNNING:
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}  # a one-shot, not a service
    assert SERVICES["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    for name in ("oauth", "code-server", "webserver", "daemon"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "xero-elt", "health"], name
        # Behind compose's init, process 1's command line is the service's command.
        role, _ = role_from_cmdline(["/sbin/docker-init", "--", *SERVICES[name]["command"]])
        assert test[3] == role, name


def test_compose_one_image_postgres_15_read_only_roots():
    images = {SERVICES[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, images
    assert all(SERVICES[name].get("build") == "." for name in APP_SERVICES)
    assert re.fullmatch(r"postgres:15(\.\d+)?(-[a-z0-9.]+)?", SERVICES["postgres"]["image"])
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    for name, service in SERVICES.items():
        assert service.get("read_only") is True, name
        assert "/tmp" in service.get("tmpfs", []), name
    for name in APP_SERVICES:
        assert SERVICES[name].get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in SERVICES[name].get("security_opt", []), name
    # DAGSTER_HOME (the image's) is the volume the Dagster processes share: instance file, runs' logs.
    home = FINAL.env()["DAGSTER_HOME"]
    for name in ("migrate", "code-server", "webserver", "daemon"):
        assert f"dagster_home:{home}" in SERVICES[name]["volumes"], name
    # The Dagster UI has no login: loopback only.
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES["webserver"]["ports"])
    assert "ports" not in SERVICES["code-server"] and "ports" not in SERVICES["postgres"]


def test_compose_inlines_no_secret():
    for name, service in SERVICES.items():
        for variable, value in service.get("environment", {}).items():
            value = str(value)
            if SENSITIVE.search(variable):
                match = REFERENCE.fullmatch(value)
                assert match, f"{name}.{variable} is not a ${{VARIABLE}}"
                assert not (match["op"] or "").endswith("-") or not match["arg"], \
                    f"{name}.{variable} has a default value"
            if "://" in value:
                userinfo = value.split("://", 1)[1].split("@")[0] if "@" in value else ""
                password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
                assert not userinfo or REFERENCE.fullmatch(password), f"{name}.{variable}: a clear password"
    # The webserver and the daemon run none of the product's code: none of its database or secrets.
    for name in ("webserver", "daemon"):
        assert set(SERVICES[name]["environment"]) == {"DAGSTER_POSTGRES_URL", "XERO_ELT_CODE_SERVER"}
    assert "env_file" not in json.dumps(COMPOSE)  # every variable is named where it is used


def test_only_migrate_gets_the_owners_login():
    """The owner (POSTGRES_USER: a superuser in the postgres image) is for migrate alone: the code
    server and its runs use the pipeline's login, the Dagster processes Dagster's, the service its own."""
    for name, service in SERVICES.items():
        uses_owner = "POSTGRES_PASSWORD" in json.dumps(service.get("environment", {}))
        assert uses_owner == (name in ("postgres", "migrate")), name
    migrate, code_server = SERVICES["migrate"]["environment"], SERVICES["code-server"]["environment"]
    assert code_server["DATABASE_URL"] == migrate["PIPELINE_DATABASE_URL"]
    assert code_server["DATABASE_URL"].startswith("postgresql://xero_elt_pipeline_login:")
    assert "PIPELINE_DATABASE_URL" not in code_server  # migrate's only: it creates that login
    for name in ("migrate", "code-server", "webserver", "daemon"):
        assert SERVICES[name]["environment"]["DAGSTER_POSTGRES_URL"].startswith("postgresql://xero_elt_dagster:")


def test_env_example_lists_every_variable_with_placeholders():
    values = json.dumps(COMPOSE)  # the parsed file: its comments left out
    referenced = {m["name"] for m in REFERENCE.finditer(values)}
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(example) == referenced
    required = {m["name"] for m in REFERENCE.finditer(values) if m["op"] == ":?"}
    for variable in required & {v for v in example if SENSITIVE.search(v)}:
        assert example[variable].startswith("replace-with-"), variable
    # With it, every service's settings resolve (a placeholder per required variable).
    interpolate(values, example)


# ---------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    assert len(STAGES) >= 2 and STAGES[0].name == "build"
    assert FINAL.base == STAGES[0].base  # the runtime starts again from the slim base, not from build
    users = FINAL.all("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0") and users[-1].split(":")[0].isdigit()
    health = FINAL.all("HEALTHCHECK")
    assert health and '"xero-elt", "health"' in health[-1]
    assert FINAL.all("CMD") == ['["xero-elt", "serve", "--port", "8080"]']


def test_dockerfile_runtime_stage_has_no_build_tools():
    runs = " ".join(FINAL.all("RUN"))
    for word in ("gcc", "build-essential", "apt-get", "pip install", "make"):
        assert word not in runs, word
    assert "uninstall -y -q pip" in " ".join(STAGES[0].all("RUN"))
    # What it takes from the build stage: the venv and the code, nothing of the build context itself.
    assert FINAL.all("COPY") == ["--from=build /opt/venv /opt/venv", "--from=build /app /app"]


def test_dockerfile_builds_the_manifest_and_pins_the_packages():
    build_runs = STAGES[0].all("RUN")
    assert any("dbt parse --project-dir dbt_project" in run for run in build_runs)
    install = "pip install --no-deps --only-binary=:all: -r /tmp/requirements.lock"
    assert any(install in run for run in build_runs)
    assert "deploy/requirements.lock /tmp/requirements.lock" in STAGES[0].all("COPY")
    assert any("_is_fresh" in run for run in FINAL.all("RUN"))  # and the copy kept it fresh


def test_dockerfile_points_every_writable_path_out_of_the_code():
    env = FINAL.env()
    for key, value in TELEMETRY_OFF.items():
        assert env[key] == value, key
    assert env["XERO_ELT_EMBEDDED_POSTGRES"] == "0"
    assert env["DAGSTER_HOME"] == "/var/lib/dagster"
    for key in ("DLT_DATA_DIR", "DBT_TARGET_PATH", "DBT_LOG_PATH", "XERO_ELT_LOCAL_DIR", "HOME"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), key
    assert env["XERO_ELT_DAGSTER_YAML"] == "/app/deploy/dagster.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_dockerignore_sends_only_what_the_images_copy():
    patterns = dockerignore_patterns()
    copied = [source for stage in STAGES for args in stage.all("COPY") if not args.startswith("--from")
              for source in args.split()[:-1]]
    lambda_stage = dockerfile_stages(REPO / "deploy/lambda/Dockerfile")[-1]
    lambda_copied = [args.split()[0] for args in lambda_stage.all("COPY")]
    for source in copied + lambda_copied:
        assert not dockerignore_excludes(source, patterns), source
    for path in ("oauth_service/migrations/alembic.ini", "dbt_project/models/marts/invoices.sql",
                 "xero_sandbox/server.py"):
        assert not dockerignore_excludes(path, patterns), path
    for path in (".env", ".git/config", ".venv/bin/python", ".local/dagster/dagster.yaml",
                 "tests/conftest.py", "bench/fleet_cycle.py", "dbt_project/target/manifest.json",
                 "dbt_project/logs/dbt.log",
                 "orchestration/__pycache__/cli.cpython-311.pyc", "xero_sandbox/data/tenants.json",
                 "deploy/lambda/template.yaml"):
        assert dockerignore_excludes(path, patterns), path


# ---------------------------------------------------------------------- locks
def test_locks_are_the_venvs_runtime_packages():
    result = subprocess.run([sys.executable, str(REPO / "deploy/lock_requirements.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    image = lock_names(REPO / "deploy/requirements.lock")
    assert all(spec.startswith("==") for spec in image.values())
    for dev_only in ("pytest", "ruff", "playwright", "moto", "cfn-lint", "xero-python", "embedded-postgres"):
        assert dev_only not in image, dev_only
    assert {"dagster", "dbt-core", "dlt", "fastapi", "boto3", "dagster-aws"} <= set(image)
    service = lock_names(REPO / "deploy/lambda/requirements.lock")
    assert set(service) <= set(image) and not {"dagster", "dbt-core", "dlt"} & set(service)


def test_lambda_lock_covers_every_import_of_the_service():
    """Every third-party module oauth_service imports, anywhere (lazy imports too), is installed by
    the Lambda image, which holds that lock and oauth_service alone."""
    modules = set()
    for path in (REPO / "oauth_service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"oauth_service", "__future__"}
    owners = packages_distributions()
    service = lock_names(REPO / "deploy/lambda/requirements.lock")
    for module in sorted(third_party):
        assert any(canonicalize_name(dist) in service for dist in owners.get(module, [])), module
    lambda_stage = dockerfile_stages(REPO / "deploy/lambda/Dockerfile")[-1]
    assert any("--no-deps" in run and "requirements.lock" in run for run in lambda_stage.all("RUN"))
    copied = " ".join(lambda_stage.all("COPY"))
    for absent in ("xero_sandbox", "orchestration", "xero_source", "dbt_project"):
        assert absent not in copied, absent


# ---------------------------------------------------------------------- health's role detection
@pytest.mark.parametrize(("argv", "expected"), [
    (["/opt/venv/bin/python", "/opt/venv/bin/xero-elt", "serve", "--port", "8080"], ("service", 8080)),
    (["/sbin/docker-init", "--", "xero-elt", "serve", "--port=9090"], ("service", 9090)),
    (["/sbin/docker-init", "--", "xero-elt", "webserver"], ("webserver", 3000)),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster-webserver", "-h", "0.0.0.0", "-p", "3100"],  # noqa: S104
     ("webserver", 3100)),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster-daemon", "run", "-w", "x"], ("daemon", None)),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster", "api", "grpc", "-m", "m", "-p", "4001"],
     ("code-server", 4001)),
    (["xero-elt", "code-server"], ("code-server", 4000)),
    (["xero-elt", "migrate"], None),
    (["/opt/venv/bin/python", "/opt/venv/bin/dagster", "dev"], None),
    (["sleep", "infinity"], None),
])
def test_health_tells_what_a_container_runs(argv, expected):
    assert role_from_cmdline(argv) == expected


def test_a_bad_secret_setting_stops_every_command_first():
    """`xero-elt` applies the <VAR>_SECRET_ID settings before anything else: a malformed one is a
    configuration error (exit 2), not a traceback, whatever the command."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "XERO_CLIENT_ID_SECRET_ID": "#"}
    for command in (["health", "service"], ["migrate"]):
        result = subprocess.run([str(VENV_BIN / "xero-elt"), *command], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("xero-elt: configuration error: Invalid secret"), result.stderr


# ---------------------------------------------------------------------- live
@dataclass
class Stack:
    root: Path
    app: Path
    db: str
    logins: dict[str, str]  # compose.yaml's login name → this run's (roles are the server's, shared)
    variables: dict[str, str]
    ports: dict[str, int]
    server: str = "127.0.0.1:5432"  # host:port of the test server (TEST_DATABASE_URL, else embedded)
    prefix: list[str] = field(default_factory=list)  # runs a command with the code read-only
    enforcement: str = ""
    migrate: subprocess.CompletedProcess | None = None
    daemon_health_before: subprocess.CompletedProcess | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    snapshot: dict[str, tuple] = field(default_factory=dict)

    def host_path(self, image_path: str, service: str) -> str:
        """An image path on this machine: /app → the copy, /tmp → the service's own tmpfs stand-in,
        DAGSTER_HOME → the volume the Dagster services share."""
        for prefix, target in (("/app", self.app), ("/tmp", self.root / service / "tmp"),
                               ("/var/lib/dagster", self.root / "dagster_home")):
            if image_path == prefix or image_path.startswith(prefix + "/"):
                return str(target) + image_path[len(prefix):]
        return image_path

    def env(self, service: str) -> dict[str, str]:
        """The image's ENV and the service's compose `environment`, nothing inherited."""
        env = {key: self.host_path(value, service) for key, value in FINAL.env().items()}
        env["PATH"] = f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"
        env["PYTHONPATH"] = str(self.app)  # the copy's code, not the checkout's (editable install)
        env["TMPDIR"] = str(self.root / service / "tmp")
        for key, value in SERVICES[service].get("environment", {}).items():
            value = interpolate(str(value), self.variables)
            for compose_login, login in self.logins.items():
                value = value.replace(f"postgresql://{compose_login}:", f"postgresql://{login}:")
            value = (value.replace("postgresql://xero_elt:", "postgresql://postgres:")
                     .replace("@postgres:5432/xero_elt_dagster", f"@{self.server}/{self.db}_dagster")
                     .replace("@postgres:5432/xero_elt", f"@{self.server}/{self.db}")
                     .replace("code-server:4000", f"127.0.0.1:{self.ports['code-server']}"))
            env[key] = value
        return env

    def command(self, service: str, argv: list[str]) -> list[str]:
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
        if service in self.ports:
            argv += ["--host", "127.0.0.1", "--port", str(self.ports[service])]
        return argv

    def run(self, service: str, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        (self.root / service / "tmp").mkdir(parents=True, exist_ok=True)
        return subprocess.run([*self.prefix, *argv], env=self.env(service), cwd=self.app, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, service: str) -> None:
        (self.root / service / "tmp").mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{service}.log", "w")  # noqa: SIM115 - the process's, closed with it
        self.processes[service] = subprocess.Popen(
            [*self.prefix, *self.command(service, SERVICES[service]["command"])], env=self.env(service),
            cwd=self.app, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def health(self, service: str) -> subprocess.CompletedProcess:
        test = SERVICES[service]["healthcheck"]["test"][1:]
        port = ["--port", str(self.ports[service])] if service in self.ports else []
        return self.run(service, [str(VENV_BIN / test[0]), *test[1:], *port], timeout=60)

    def wait_healthy(self, service: str, seconds: float = 90) -> subprocess.CompletedProcess:
        assert service in self.processes, f"{service} was not started: migrate failed"
        deadline = time.monotonic() + seconds
        while True:
            result = self.health(service)
            process = self.processes[service]
            if result.returncode == 0 or time.monotonic() > deadline or process.poll() is not None:
                return result
            time.sleep(1)

    def log(self, service: str) -> str:
        return (self.root / f"{service}.log").read_text()[-3000:]

    def stop(self) -> dict[str, float]:
        """SIGTERM to each process group (compose's stop), SIGKILL after compose's grace period."""
        seconds = {}
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        started = time.monotonic()
        for service, process in self.processes.items():
            grace = 30 if service == "code-server" else 10
            try:
                process.wait(timeout=max(0.1, grace - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            seconds[service] = time.monotonic() - started
        return seconds


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`: kind, size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def copy_build_context(app: Path) -> None:
    """What the Dockerfile's build stage copies into /app (as .dockerignore lets it)."""
    patterns = dockerignore_patterns()
    for args in STAGES[0].all("COPY"):
        *sources, dest = args.split()
        if sources[0].startswith("--") or dest.startswith("/"):
            continue
        for source in sources:
            target = app / dest / Path(source).name if dest.endswith("/") else app / dest
            src = REPO / source
            for path in [src, *src.rglob("*")] if src.is_dir() else [src]:
                relative = path.relative_to(REPO)
                if path.is_file() and not dockerignore_excludes(str(relative), patterns):
                    out = target / path.relative_to(src) if src.is_dir() else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)


def run_build_step(app: Path, marker: str) -> None:
    """The `&&` segment of the build stage's RUN that contains `marker`, run in the copy."""
    segment = next(part for run in STAGES[0].all("RUN") for part in run.split("&&") if marker in part)
    argv = [str(VENV_BIN / word[len("/opt/venv/bin/"):]) if word.startswith("/opt/venv/bin/") else word
            for word in shlex.split(segment)]
    env = {**os.environ, **STAGES[0].env(), "PYTHONPATH": str(app)}
    result = subprocess.run(argv, cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def read_only_prefix(folders: list[Path]) -> tuple[list[str], str]:
    """A command prefix that runs the command in a mount namespace of its own where `folders` (the
    code, the venv, the interpreter: what the image's read-only root holds) are read-only bind mounts,
    as Docker's read_only makes them: refused even to root. ([], "") where namespaces are not allowed."""
    script = "set -e; " + "".join(f"mount --bind {shlex.quote(str(f))} {shlex.quote(str(f))}; "
                                  f"mount -o remount,bind,ro {shlex.quote(str(f))}; "
                                  for f in folders) + 'exec "$@"'
    prefix = ["unshare", "-m" if os.geteuid() == 0 else "-rm", "--propagation", "private",
              "sh", "-c", script, "sh"]
    try:
        works = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        works = False
    return (prefix, "read-only bind mounts (unshare)") if works else ([], "")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(postgres_server: DatabaseUrl, tmp_path_factory) -> Stack:
    from oauth_service.settings import generate_key

    root = tmp_path_factory.mktemp("image")
    suffix = uuid.uuid4().hex[:8]
    s = Stack(root=root, app=root / "app", db=f"xero_elt_test_deploy_{suffix}",
              server=f"{postgres_server.host}:{postgres_server.port}",
              logins={"xero_elt_service": f"xero_elt_svc_{suffix}",
                      "xero_elt_pipeline_login": f"xero_elt_pipe_{suffix}",
                      "xero_elt_dagster": f"xero_elt_dag_{suffix}"},
              variables={"POSTGRES_PASSWORD": "unused-trust-auth", "APP_DB_PASSWORD": uuid.uuid4().hex,
                         "PIPELINE_DB_PASSWORD": uuid.uuid4().hex, "DAGSTER_DB_PASSWORD": uuid.uuid4().hex,
                         "TOKEN_ENCRYPTION_KEY": generate_key(), "XERO_CLIENT_ID": "deploy-test-client",
                         "XERO_CLIENT_SECRET": uuid.uuid4().hex, "AUTH_JWT_SECRET": uuid.uuid4().hex * 2,
                         "XERO_REDIRECT_URI": "https://api.example.com/xero/auth/callback",
                         "APP_RETURN_URL": "https://app.example.com/settings/xero"},
              ports={"oauth": free_port(), "code-server": free_port(), "webserver": free_port()})
    (root / "dagster_home").mkdir()

    copy_build_context(s.app)
    run_build_step(s.app, "dbt parse")
    run_build_step(s.app, "compileall")
    s.prefix, s.enforcement = read_only_prefix([s.app, VENV_BIN.parent, Path(sys.base_prefix)])
    if not s.prefix and os.geteuid() != 0:
        for path in [s.app, *s.app.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        s.enforcement = "an unwritable copy"
    s.snapshot = tree(s.app)

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(s.db)))
    try:
        s.migrate = s.run("migrate", s.command("migrate", SERVICES["migrate"]["command"]))
        s.daemon_health_before = s.health("daemon")
        if s.migrate.returncode == 0:
            # As compose orders them: the webserver and daemon once the code server is healthy
            # (started before it, the webserver shows the location as unreachable until a reload).
            s.start("code-server")
            s.start("oauth")
            s.wait_healthy("code-server")
            for service in ("webserver", "daemon"):
                s.start(service)
        yield s
    finally:
        s.stop()
        for path in [s.app, *s.app.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            for name in (s.db, f"{s.db}_dagster"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            for login in s.logins.values():  # once the databases holding their objects are gone
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


def _login_row(conn: psycopg.Connection, login: str) -> tuple:
    """(INHERIT, superuser, its group roles, its settings in this database) of `login`."""
    return conn.execute(
        "SELECT rolinherit, rolsuper, "
        "ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid), "
        "ARRAY(SELECT unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setrole = r.oid "
        "AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())) "
        "FROM pg_roles r WHERE rolname = %s", (login,)).fetchone()


def test_migrate_prepares_the_database_and_runs_again(stack: Stack, postgres_server: DatabaseUrl):
    from oauth_service.db import scram_sha256_matches

    assert stack.migrate.returncode == 0, stack.migrate.stdout + stack.migrate.stderr
    service, pipeline, dagster = stack.logins.values()
    out = stack.migrate.stdout
    assert "app schema revision: " in out
    assert f"service login {service} (APP_DATABASE_URL): created\n" in out
    assert f"pipeline login {pipeline} (PIPELINE_DATABASE_URL): created\n" in out
    assert f"Dagster storage login {dagster} (DAGSTER_POSTGRES_URL): created\n" in out
    assert (f"Dagster storage database {stack.db}_dagster: created, {dagster} may create its tables in "
            "schema public\n") in out
    with psycopg.connect(postgres_server.with_database(stack.db).url) as conn:
        assert conn.execute("SELECT to_regclass('app.xero_connections')").fetchone()[0] is not None
        # Each a member of exactly its group role; the pipeline's NOINHERIT, acting as its role here.
        assert _login_row(conn, service) == (True, False, ["xero_elt_app"], [])
        assert _login_row(conn, pipeline) == (False, False, ["xero_elt_pipeline"], ["role=xero_elt_pipeline"])
        assert _login_row(conn, dagster) == (True, False, [], [])
    with psycopg.connect(postgres_server.with_database(f"{stack.db}_dagster").url) as conn:
        # dagster-postgres made its tables as Dagster's own login.
        owners = conn.execute("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'r' "
                              "AND relnamespace = 'public'::regnamespace").fetchall()
        assert owners == [(dagster,)]
        assert conn.execute("SELECT to_regclass('public.runs')").fetchone()[0] is not None

    # Again, with the pipeline's password changed in .env: set, the others left as they are.
    old_password = stack.variables["PIPELINE_DB_PASSWORD"]
    stack.variables["PIPELINE_DB_PASSWORD"] = new_password = uuid.uuid4().hex
    again = stack.run("migrate", stack.command("migrate", SERVICES["migrate"]["command"]))
    assert again.returncode == 0, again.stderr
    assert f"service login {service} (APP_DATABASE_URL): unchanged\n" in again.stdout
    assert f"pipeline login {pipeline} (PIPELINE_DATABASE_URL): password set\n" in again.stdout
    assert f"Dagster storage login {dagster} (DAGSTER_POSTGRES_URL): unchanged\n" in again.stdout
    assert f"Dagster storage database {stack.db}_dagster: exists, " in again.stdout
    for secret in (old_password, new_password, stack.variables["APP_DB_PASSWORD"]):
        assert secret not in again.stdout + again.stderr + stack.migrate.stdout + stack.migrate.stderr
    with psycopg.connect(postgres_server.url) as conn:
        [verifier] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                  (pipeline,)).fetchone()
    assert scram_sha256_matches(new_password, verifier) and not scram_sha256_matches(old_password, verifier)
    # The code server's URL, with the new password (this test server trusts 127.0.0.1: the verifier
    # above is what proves the password).
    url = stack.env("code-server")["DATABASE_URL"]
    assert new_password in url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (pipeline, "xero_elt_pipeline")


def test_daemon_health_fails_while_no_daemon_runs(stack: Stack):
    assert stack.daemon_health_before.returncode == 1, stack.daemon_health_before.stdout
    assert "no recent heartbeat" in stack.daemon_health_before.stdout


def test_the_code_server_answers_its_health_check(stack: Stack):
    result = stack.wait_healthy("code-server")
    assert result.returncode == 0, result.stdout + result.stderr + stack.log("code-server")
    assert "SERVING" in result.stdout
    # It serves the read-only copy's code.
    cmdline = Path(f"/proc/{stack.processes['code-server'].pid}/cmdline").read_bytes().split(b"\0")
    assert str(stack.app).encode() in cmdline


def test_the_oauth_service_answers_its_health_check(stack: Stack):
    result = stack.wait_healthy("oauth")
    assert result.returncode == 0, result.stdout + result.stderr + stack.log("oauth")
    assert '"database":"ok"' in result.stdout


def test_health_without_argument_checks_what_process_1_runs(stack: Stack, monkeypatch, capsys):
    """The image's HEALTHCHECK (`xero-elt health`), here with process 1 faked as compose runs it."""
    from orchestration import entrypoints

    port = str(stack.ports["oauth"])
    stack.wait_healthy("oauth")
    monkeypatch.setattr(entrypoints, "_main_process_cmdline",
                        lambda: ["/sbin/docker-init", "--", "xero-elt", "serve", "--port", port])
    assert entrypoints.health(None, "127.0.0.1", None) == 0
    monkeypatch.setattr(entrypoints, "_main_process_cmdline",  # the same, on a port nothing listens on
                        lambda: ["/sbin/docker-init", "--", "xero-elt", "serve", "--port", str(free_port())])
    assert entrypoints.health(None, "127.0.0.1", None) == 1
    monkeypatch.setattr(entrypoints, "_main_process_cmdline", lambda: ["sleep", "infinity"])
    assert entrypoints.health(None, "127.0.0.1", None) == 1
    assert "cannot tell what this container runs" in capsys.readouterr().err


def test_the_webserver_answers_and_loads_the_code_location(stack: Stack):
    result = stack.wait_healthy("webserver")
    assert result.returncode == 0, result.stdout + result.stderr + stack.log("webserver")
    query = ("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
             "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
    request = urllib.request.Request(f"http://127.0.0.1:{stack.ports['webserver']}/graphql",
                                     data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
    assert [(e["name"], e["loadStatus"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
        ("orchestration.definitions", "LOADED", "RepositoryLocation")], stack.log("code-server")[-3000:]


def test_the_daemon_reports_live(stack: Stack):
    result = stack.wait_healthy("daemon")
    assert result.returncode == 0, result.stdout + result.stderr + stack.log("daemon")


def test_read_only_is_enforced_on_the_code(stack: Stack):
    if not stack.enforcement:
        pytest.skip("running as root without mount namespaces: only the tree comparison below checks")
    probe = stack.run("code-server", [str(VENV_BIN / "python"), "-c",
                                      f"open({str(stack.app / 'probe')!r}, 'w')"], timeout=30)
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr or "PermissionError" in probe.stderr, probe.stderr


def test_nothing_was_written_under_the_code(stack: Stack):
    for service, process in stack.processes.items():
        assert process.poll() is None, f"{service} exited early:\n{stack.log(service)}"
    seconds = stack.stop()
    assert max(seconds.values()) < 30, seconds
    assert tree(stack.app) == stack.snapshot
    # And the writable places were used as the image points at them.
    installed = (stack.root / "dagster_home" / "dagster.yaml").read_text()
    assert installed == (stack.app / "deploy/dagster.yaml").read_text()
