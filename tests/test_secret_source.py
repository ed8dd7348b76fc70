"""Settings read from AWS Secrets Manager (oauth_service.secret_source), with moto as the AWS API,
and the Lambda entry point built (and rebuilt after a rotation) from them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import boto3
import psycopg
import pytest
from moto import mock_aws
from psycopg import sql
from sqlalchemy.engine import make_url

import oauth_service.lambda_handler as lambda_handler
from oauth_service import secret_source
from oauth_service.db import (
    ANALYST_ROLE,
    PIPELINE_ROLE,
    create_app_login,
    create_login,
    drop_app_login,
    scram_sha256_matches,
    scram_sha256_verifier,
)
from oauth_service.secret_source import (
    APPLIED_MARKER,
    SECRET_VARIABLES,
    apply_secrets,
    refresh_secrets,
)
from oauth_service.settings import Settings, SettingsError, generate_key
from orchestration.entrypoints import ensure_dagster_storage, ensure_logins
from orchestration.settings import DatabaseUrl
from tests.oauth_service.oauth_testlib import administer_group_roles_as_their_creator, api_gateway_event

REPO = Path(__file__).resolve().parents[1]
REGION = "eu-west-1"
# Every character that means something in a URL, and a non-ASCII one.
ODD_PASSWORD = "p@ss:w/rd%#?&=+ é[]"
SECRET_VALUE = "s3cr3t-value-that-must-never-be-shown"


class Clock:
    """secret_source's clock, moved by hand (the TTL is measured with it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def secretsmanager(monkeypatch):
    """moto's Secrets Manager, and a secrets source with no client and nothing cached yet."""
    fake_aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in fake_aws.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(secret_source, "_client", None)
    monkeypatch.setattr(secret_source, "_cache", {})
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


@pytest.fixture
def reads(secretsmanager) -> list[str]:
    """The SecretId of every GetSecretValue call the secrets source makes, in order."""
    calls: list[str] = []

    def record(params, **_kwargs):
        calls.append(params["SecretId"])

    events = secret_source._secrets_client().meta.events
    events.register("provide-client-params.secrets-manager.GetSecretValue", record)
    return calls


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(secret_source, "_clock", clock)
    return clock


def rds_secret(password: str = ODD_PASSWORD, **fields) -> str:
    """A secret as RDS writes (and rotates) it."""
    return json.dumps(
        {
            "engine": "postgres",
            "username": "xero owner",
            "password": password,
            "host": "db.abc123.eu-west-1.rds.amazonaws.com",
            "port": 5432,
            "dbname": "xero_elt",
            **fields,
        }
    )


# ---------------------------------------------------------------------- reading every variable
def test_every_variable_is_read_from_its_secret(secretsmanager, reads):
    token_keys = f"{generate_key()},{generate_key()}"
    xero = {"client_id": "client-id-1", "client_secret": "client-secret-1", "webhook_key": "webhook-key-1",
            "jwt_secret": "j" * 40}
    secretsmanager.create_secret(Name="xero/app", SecretString=json.dumps(xero))
    token_arn = secretsmanager.create_secret(Name="xero/token-key", SecretString=token_keys)["ARN"]
    secretsmanager.create_secret(Name="rds/owner", SecretString=rds_secret())
    app_login = rds_secret("app-pass", username="xero_app", port="6543", host="10.0.0.7", dbname="app db")
    secretsmanager.create_secret(Name="rds/app-login", SecretString=app_login)
    env = {
        "XERO_CLIENT_ID_SECRET_ID": "xero/app#client_id",
        "XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret",
        "XERO_WEBHOOK_KEY_SECRET_ID": "xero/app#webhook_key",
        "AUTH_JWT_SECRET_SECRET_ID": "xero/app#jwt_secret",
        "TOKEN_ENCRYPTION_KEY_SECRET_ID": token_arn,  # an ARN, and the whole SecretString
        "DATABASE_URL_SECRET_ID": "rds/owner",
        "APP_DATABASE_URL_SECRET_ID": "rds/app-login",
        "APP_DATABASE_URL_SECRET_QUERY": "sslmode=verify-full&connect_timeout=5",
        "DAGSTER_POSTGRES_URL_SECRET_ID": "rds/owner",  # the same secret, another variable
        "PIPELINE_DATABASE_URL_SECRET_ID": "rds/app-login",
        "PIPELINE_DATABASE_URL_SECRET_QUERY": "",
    }

    assert apply_secrets(env) == list(SECRET_VARIABLES)

    assert (env["XERO_CLIENT_ID"], env["XERO_CLIENT_SECRET"]) == (xero["client_id"], xero["client_secret"])
    assert (env["XERO_WEBHOOK_KEY"], env["AUTH_JWT_SECRET"]) == (xero["webhook_key"], xero["jwt_secret"])
    assert env["TOKEN_ENCRYPTION_KEY"] == token_keys

    owner = make_url(env["DATABASE_URL"])
    assert (owner.drivername, owner.username, owner.password) == ("postgresql", "xero owner", ODD_PASSWORD)
    assert owner.host == "db.abc123.eu-west-1.rds.amazonaws.com"
    assert (owner.port, owner.database) == (5432, "xero_elt")
    assert dict(owner.query) == {"sslmode": "require"}  # the default for a composed URL
    libpq = psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"])  # what psycopg itself will use
    assert (libpq["user"], libpq["password"], libpq["sslmode"]) == ("xero owner", ODD_PASSWORD, "require")

    app = make_url(env["APP_DATABASE_URL"])
    assert (app.username, app.password, app.host, app.port, app.database) == (
        "xero_app", "app-pass", "10.0.0.7", 6543, "app db")
    assert dict(app.query) == {"sslmode": "verify-full", "connect_timeout": "5"}

    assert env["PIPELINE_DATABASE_URL"] == "postgresql://xero_app:app-pass@10.0.0.7:6543/app%20db"

    dagster = make_url(env["DAGSTER_POSTGRES_URL"])
    assert (dagster.drivername, dagster.password) == ("postgresql+psycopg2", ODD_PASSWORD)
    assert dict(dagster.query) == {"sslmode": "require", "options": "-c timezone=UTC"}

    # One read per secret id, although xero/app serves four variables and rds/owner two.
    assert Counter(reads) == Counter(["xero/app", token_arn, "rds/owner", "rds/app-login"])
    # The settings of the service and of the orchestration take these values as they are.
    settings = Settings.from_env({**env, "XERO_REDIRECT_URI": "https://oauth.example.com/xero/auth/callback",
                                  "APP_RETURN_URL": "https://app.example.com/settings/xero"})
    assert settings.token_encryption_keys == tuple(token_keys.split(","))
    assert settings.xero_client_secret == xero["client_secret"]
    assert DatabaseUrl.parse(env["DATABASE_URL"]).password == ODD_PASSWORD
    dagster_storage = DatabaseUrl.parse(env["DAGSTER_POSTGRES_URL"], "DAGSTER_POSTGRES_URL")
    assert dagster_storage.user == "xero owner"
    assert dagster_storage.in_utc() == dagster_storage  # already in UTC: orchestration keeps it as it is


def test_an_ipv6_rds_host_is_bracketed_and_an_empty_query_means_none(secretsmanager):
    secretsmanager.create_secret(Name="rds/v6", SecretString=rds_secret(host="fd00::7"))
    env = {"DATABASE_URL_SECRET_ID": "rds/v6", "DATABASE_URL_SECRET_QUERY": ""}
    apply_secrets(env)
    assert make_url(env["DATABASE_URL"]).host == "fd00::7"
    assert env["DATABASE_URL"].endswith("@[fd00::7]:5432/xero_elt")


LIBPQ_ENV = {"PGHOST": "db.stack.eu-west-1.rds.amazonaws.com", "PGPORT": "6432", "PGDATABASE": "xero_elt"}


def test_an_rds_master_secret_takes_host_port_and_database_from_libpq_variables(secretsmanager):
    """RDS's managed master secret holds only the username and password: PGHOST, PGPORT and PGDATABASE
    (the migrate task's, from the database stack) complete it. A secret's own fields win over them."""
    master = json.dumps({"username": "xero_elt_admin", "password": ODD_PASSWORD})
    secretsmanager.create_secret(Name="rds!db-1234", SecretString=master)
    secretsmanager.create_secret(Name="xero/db/dagster", SecretString=rds_secret(
        "dagster-pass", username="xero_elt_dagster", host="db.other.example", dbname="xero_elt_dagster"))
    env = {"DATABASE_URL_SECRET_ID": "rds!db-1234", "DAGSTER_POSTGRES_URL_SECRET_ID": "xero/db/dagster",
           **LIBPQ_ENV}

    apply_secrets(env)

    owner = make_url(env["DATABASE_URL"])
    assert (owner.username, owner.password) == ("xero_elt_admin", ODD_PASSWORD)
    assert (owner.host, owner.port, owner.database) == (LIBPQ_ENV["PGHOST"], 6432, "xero_elt")
    dagster = make_url(env["DAGSTER_POSTGRES_URL"])
    assert (dagster.host, dagster.port, dagster.database) == ("db.other.example", 5432, "xero_elt_dagster")


@pytest.mark.parametrize(
    ("libpq", "problem"),
    [
        ({}, "lacks RDS field(s) host, dbname (an RDS secret holds username, password, host, dbname and "
             "port, or set PGHOST and PGDATABASE in the environment"),
        ({"PGHOST": "db.example", "PGDATABASE": " "}, "lacks RDS field(s) dbname"),
        ({**LIBPQ_ENV, "PGPORT": "54x2"}, "lacks field port, and PGPORT='54x2' is not a port number"),
        ({**LIBPQ_ENV, "PGHOST": "/var/run/postgresql"}, "PGHOST='/var/run/postgresql' is not one host"),
        ({**LIBPQ_ENV, "PGHOST": "db1,db2"}, "PGHOST='db1,db2' is not one host"),
    ],
    ids=["no-libpq-variables", "blank-database", "bad-port", "socket-folder", "host-list"],
)
def test_an_incomplete_rds_secret_without_usable_libpq_variables_is_refused(secretsmanager, libpq, problem):
    secretsmanager.create_secret(Name="rds!db-1234", SecretString=json.dumps(
        {"username": "xero_elt_admin", "password": SECRET_VALUE}))
    env = {"DATABASE_URL_SECRET_ID": "rds!db-1234", **libpq}
    with pytest.raises(SettingsError) as raised:
        apply_secrets(env)
    message = str(raised.value)
    assert message.startswith("DATABASE_URL: secret 'rds!db-1234' "), message
    assert problem in message
    assert SECRET_VALUE not in message
    assert "DATABASE_URL" not in env


# ---------------------------------------------------------------------- caching and rotation
def test_secrets_are_cached_for_the_ttl_and_a_rotation_is_seen_after_it(secretsmanager, reads, clock):
    secretsmanager.create_secret(Name="xero/app", SecretString=json.dumps({"client_secret": "before"}))
    env = {"XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret", "XERO_ELT_SECRETS_TTL_SECONDS": "60"}
    assert apply_secrets(env) == ["XERO_CLIENT_SECRET"]
    secretsmanager.put_secret_value(SecretId="xero/app", SecretString=json.dumps({"client_secret": "after"}))

    clock.advance(59)
    apply_secrets(env)  # within the TTL: from the cache (and not refused as "both set": it set it itself)
    assert (env["XERO_CLIENT_SECRET"], len(reads)) == ("before", 1)

    clock.advance(2)
    apply_secrets(env)
    assert (env["XERO_CLIENT_SECRET"], len(reads)) == ("after", 2)

    secretsmanager.put_secret_value(SecretId="xero/app", SecretString=json.dumps({"client_secret": "forced"}))
    assert refresh_secrets(env) == ["XERO_CLIENT_SECRET"]  # whatever the TTL
    assert (env["XERO_CLIENT_SECRET"], len(reads)) == ("forced", 3)
    assert env[APPLIED_MARKER] == "XERO_CLIENT_SECRET"


def test_a_child_process_environment_is_applied_again_with_fresh_values(secretsmanager, reads):
    """A process started with the environment of one that applied the secrets (a Dagster run worker,
    say) applies them again: the marker tells that the values it inherited came from the secrets."""
    secretsmanager.create_secret(Name="rds/owner", SecretString=rds_secret("old"))
    parent = {"DATABASE_URL_SECRET_ID": "rds/owner"}
    apply_secrets(parent)
    secretsmanager.put_secret_value(SecretId="rds/owner", SecretString=rds_secret("rotated"))

    child = dict(parent)
    refresh_secrets(child)  # the child's own cache starts empty
    assert make_url(child["DATABASE_URL"]).password == "rotated"
    assert make_url(parent["DATABASE_URL"]).password == "old"


def test_a_broken_secret_is_read_again_as_soon_as_it_is_fixed(secretsmanager, reads, clock):
    secretsmanager.create_secret(Name="rds/owner", SecretString=rds_secret(host=""))
    env = {"DATABASE_URL_SECRET_ID": "rds/owner"}
    with pytest.raises(SettingsError, match="lacks RDS field"):
        apply_secrets(env)
    secretsmanager.put_secret_value(SecretId="rds/owner", SecretString=rds_secret())
    apply_secrets(env)  # the TTL has not passed, but nothing broken stays cached
    assert make_url(env["DATABASE_URL"]).host == "db.abc123.eu-west-1.rds.amazonaws.com"
    assert len(reads) == 2


# ---------------------------------------------------------------------- failures
def _setup_missing_secret(sm):
    return {"XERO_CLIENT_SECRET_SECRET_ID": "xero/absent#client_secret"}


def _setup_missing_key(sm):
    sm.create_secret(Name="xero/app", SecretString=json.dumps({"client_id": SECRET_VALUE}))
    return {"XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret"}


def _setup_malformed_json(sm):
    sm.create_secret(Name="xero/app", SecretString='{"client_secret": "' + SECRET_VALUE + '"')
    return {"XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret"}


def _setup_missing_rds_field(sm):
    sm.create_secret(Name="rds/owner", SecretString=json.dumps({"username": "u", "password": SECRET_VALUE,
                                                                "dbname": "xero_elt"}))
    return {"DATABASE_URL_SECRET_ID": "rds/owner"}


def _setup_rds_secret_of_another_engine(sm):
    sm.create_secret(Name="rds/owner", SecretString=rds_secret(SECRET_VALUE, engine="mysql"))
    return {"APP_DATABASE_URL_SECRET_ID": "rds/owner"}


def _setup_both_set(sm):
    sm.create_secret(Name="xero/app", SecretString=json.dumps({"client_secret": "from-the-secret"}))
    return {"XERO_CLIENT_SECRET": SECRET_VALUE, "XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret"}


def _setup_aws_refusal(sm):
    sm.create_secret(Name="xero/app", SecretString=json.dumps({"client_secret": SECRET_VALUE}))
    sm.delete_secret(SecretId="xero/app", RecoveryWindowInDays=7)  # reading it is then refused
    return {"XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret"}


@pytest.mark.parametrize(
    ("setup", "variable", "secret_id", "problem"),
    [
        (_setup_missing_secret, "XERO_CLIENT_SECRET", "xero/absent", f"does not exist in AWS Secrets Manager "
         f"(region {REGION})"),
        (_setup_missing_key, "XERO_CLIENT_SECRET", "xero/app", "has no JSON key 'client_secret'"),
        (_setup_malformed_json, "XERO_CLIENT_SECRET", "xero/app", "is not valid JSON"),
        (_setup_missing_rds_field, "DATABASE_URL", "rds/owner", "lacks RDS field(s) host"),
        (_setup_rds_secret_of_another_engine, "APP_DATABASE_URL", "rds/owner", "not PostgreSQL"),
        (_setup_both_set, "XERO_CLIENT_SECRET", "xero/app", "are both set"),
        (_setup_aws_refusal, "XERO_CLIENT_SECRET", "xero/app", "InvalidRequestException"),
    ],
    ids=lambda p: p.__name__.removeprefix("_setup_") if callable(p) else None,
)
def test_a_bad_secret_fails_clearly_without_showing_its_value(secretsmanager, caplog, setup, variable,
                                                              secret_id, problem):
    env = setup(secretsmanager)
    before = dict(env)
    caplog.set_level("DEBUG")
    with pytest.raises(SettingsError) as raised:
        apply_secrets(env)
    message = str(raised.value)
    assert variable in message
    assert repr(secret_id) in message
    assert problem in message
    assert SECRET_VALUE not in message
    assert SECRET_VALUE not in caplog.text
    assert env == before  # all or nothing


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"XERO_CLIENT_ID_SECRET_ID": "xero/app#"}, "must be '<secret id or ARN>'"),
        ({"XERO_CLIENT_ID_SECRET_ID": "#client_id"}, "must be '<secret id or ARN>'"),
        ({"DATABASE_URL_SECRET_ID": "xero/app#url", "DATABASE_URL_SECRET_QUERY": "sslmode=disable"},
         "DATABASE_URL_SECRET_QUERY applies only to a URL composed from an RDS secret"),
        ({"XERO_CLIENT_ID_SECRET_ID": "xero/app#client_id", "XERO_ELT_SECRETS_TTL_SECONDS": "5m"},
         "XERO_ELT_SECRETS_TTL_SECONDS must be a whole number"),
    ],
)
def test_malformed_secret_settings_are_refused_before_any_read(secretsmanager, reads, env, problem):
    with pytest.raises(SettingsError, match="secret settings|XERO_ELT_SECRETS_TTL") as raised:
        apply_secrets(env)
    assert problem in str(raised.value)
    assert reads == []


def test_without_secret_ids_nothing_is_set_and_boto3_never_imported(tmp_path):
    """In a fresh interpreter, as a process that uses no secret id (the Lambda entry point's imports
    included). The second half is the control: with a secret id, boto3 is imported (and without a
    region the failure names the variable and the secret)."""
    script = """
import json, sys
import oauth_service.lambda_handler
from oauth_service.secret_source import apply_secrets
from oauth_service.settings import SettingsError

env = {"DATABASE_URL": "postgresql://u@h/db", "XERO_CLIENT_ID": "id"}
result = {"applied": apply_secrets(env), "env": dict(env), "boto_before": "boto3" in sys.modules}
env["XERO_CLIENT_SECRET_SECRET_ID"] = "xero/app#client_secret"
try:
    apply_secrets(env)
except SettingsError as exc:
    result["error"] = str(exc)
result["boto_after"] = "boto3" in sys.modules
print(json.dumps(result))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.endswith("_SECRET_ID")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["applied"] == []
    assert result["env"] == {"DATABASE_URL": "postgresql://u@h/db", "XERO_CLIENT_ID": "id"}  # no marker
    assert result["boto_before"] is False
    assert result["boto_after"] is True
    assert "XERO_CLIENT_SECRET: secret 'xero/app' could not be read" in result["error"]
    assert "region" in result["error"]


class Execed(Exception):
    """Raised by the stand-in of os.execvp: the command and the environment it would have had."""

    def __init__(self, file: str, args: list[str]):
        super().__init__(file)
        self.command = args
        self.environ = dict(os.environ)


def fake_execvp(file: str, args: list[str]):
    raise Execed(file, args)


def test_the_command_line_applies_the_secrets_then_becomes_the_command(secretsmanager, monkeypatch, capsys):
    secretsmanager.create_secret(Name="rds/dagster", SecretString=rds_secret())
    monkeypatch.setattr(os, "execvp", fake_execvp)
    with mock.patch.dict(os.environ, {"DAGSTER_POSTGRES_URL_SECRET_ID": "rds/dagster"}):
        os.environ.pop("DAGSTER_POSTGRES_URL", None)
        with pytest.raises(Execed) as execed:
            secret_source.main(["dagster-daemon", "run"])
        assert execed.value.command == ["dagster-daemon", "run"]
        assert make_url(execed.value.environ["DAGSTER_POSTGRES_URL"]).password == ODD_PASSWORD

        # A bad secret: a message naming it, and no command run.
        secretsmanager.put_secret_value(SecretId="rds/dagster", SecretString="not json")
        monkeypatch.setattr(secret_source, "_cache", {})
        assert secret_source.main(["dagster-daemon", "run"]) == 1
        assert "DAGSTER_POSTGRES_URL: secret 'rds/dagster' is not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------------- the Lambda entry point
@pytest.fixture
def app_login(migrated_database_url):
    """A dedicated login (as APP_DATABASE_URL must be), as libpq's connection parameters."""
    name = f"xero_elt_test_{uuid.uuid4().hex[:10]}"
    url = create_app_login(migrated_database_url, name)
    yield psycopg.conninfo.conninfo_to_dict(url)
    drop_app_login(migrated_database_url, name)


@pytest.fixture
def lambda_environment(monkeypatch, secretsmanager):
    """os.environ as the Lambda function has it, restored afterwards; no app built yet."""
    with mock.patch.dict(os.environ):
        for name in (*SECRET_VARIABLES, APPLIED_MARKER, "DEMO_MODE", "AUTH_JWKS_URL", "APP_ORIGIN"):
            os.environ.pop(name, None)
        monkeypatch.setattr(lambda_handler, "_adapter", None)
        monkeypatch.setattr(lambda_handler, "_built_from", {})
        yield
        if lambda_handler._adapter is not None:
            lambda_handler._adapter.app.state.engine.dispose()


def test_lambda_builds_the_app_from_secrets_and_rebuilds_it_after_a_rotation(
    lambda_environment, secretsmanager, reads, clock, app_login, migrated_database_url
):
    login = app_login
    xero = {"client_id": "client-id-1", "client_secret": "client-secret-1", "jwt_secret": "j" * 40,
            "token_key": generate_key(), "owner_url": migrated_database_url}
    secretsmanager.create_secret(Name="xero/app", SecretString=json.dumps(xero))

    def login_secret(password: str) -> str:
        return rds_secret(password, username=login["user"], host=login["host"], port=int(login["port"]),
                          dbname=login["dbname"])

    secretsmanager.create_secret(Name="rds/app-login", SecretString=login_secret(login["password"]))
    os.environ.update({
        "XERO_CLIENT_ID_SECRET_ID": "xero/app#client_id",
        "XERO_CLIENT_SECRET_SECRET_ID": "xero/app#client_secret",
        "AUTH_JWT_SECRET_SECRET_ID": "xero/app#jwt_secret",
        "TOKEN_ENCRYPTION_KEY_SECRET_ID": "xero/app#token_key",
        "DATABASE_URL_SECRET_ID": "xero/app#owner_url",  # a whole URL held in a key
        "APP_DATABASE_URL_SECRET_ID": "rds/app-login",
        "APP_DATABASE_URL_SECRET_QUERY": "sslmode=disable",  # the test server has no TLS
        "XERO_REDIRECT_URI": "https://oauth.example.com/xero/auth/callback",
        "APP_RETURN_URL": "https://app.example.com/settings/xero",
    })

    def healthz() -> int:
        return lambda_handler.handler(api_gateway_event("GET", "/healthz"), None)["statusCode"]

    assert healthz() == 200
    first = lambda_handler._adapter
    settings = first.app.state.settings
    assert (settings.xero_client_id, settings.xero_client_secret) == ("client-id-1", "client-secret-1")
    assert settings.token_encryption_keys == (xero["token_key"],)
    assert make_url(settings.app_database_url).username == login["user"]
    assert healthz() == 200
    assert (lambda_handler._adapter, len(reads)) == (first, 2)  # within the TTL: nothing read again

    # The TTL passes without a rotation: read again, but the same app serves on.
    clock.advance(301)
    assert healthz() == 200
    assert (lambda_handler._adapter, len(reads)) == (first, 4)

    # A rotation that wrote a broken secret: refused, the app in place is kept.
    secretsmanager.put_secret_value(SecretId="rds/app-login", SecretString=login_secret(""))
    clock.advance(301)
    with pytest.raises(SettingsError, match="APP_DATABASE_URL: secret 'rds/app-login' lacks RDS field"):
        healthz()
    assert lambda_handler._adapter is first

    # The rotation done right: a new password, in the database and in the secret.
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(login["user"]), sql.Literal(scram_sha256_verifier(ODD_PASSWORD))))
    secretsmanager.put_secret_value(SecretId="rds/app-login", SecretString=login_secret(ODD_PASSWORD))
    old_pool = first.app.state.engine.pool
    assert old_pool.checkedin() == 1  # the health checks' connection
    assert healthz() == 200  # the broken secret was not cached: no TTL to wait
    second = lambda_handler._adapter
    assert second is not first
    assert make_url(second.app.state.settings.app_database_url).password == ODD_PASSWORD
    assert second.app.state.engine is not first.app.state.engine
    assert old_pool.checkedin() == 0  # the old engine was disposed: its connections closed


# ---------------------------------------------------------------------- the migrate task's logins
@dataclass
class RdsLike:
    """A server as RDS leaves it (see the fixture) and the three logins its secrets name."""

    server: DatabaseUrl
    master: str
    master_password: str
    database: str
    service: str
    pipeline: str
    dagster: str

    def login_secret(self, user: str, password: str, database: str | None = None) -> str:
        return rds_secret(password, username=user, host=self.server.host, port=self.server.port,
                          dbname=database or self.database)


@pytest.fixture
def rds_like(postgres_server: DatabaseUrl):
    """A master as RDS makes it (CREATEROLE and CREATEDB, no superuser: it cannot read pg_authid),
    owner of the app database; the logins' names are this test's own (roles are the server's)."""
    suffix = uuid.uuid4().hex[:8]
    aws = RdsLike(postgres_server, f"xero_elt_test_master_{suffix}", secrets.token_urlsafe(24),
                  f"xero_elt_test_aws_{suffix}", *(f"xero_elt_test_{kind}_{suffix}" for kind in
                                                   ("svc", "pipe", "dag")))
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB NOSUPERUSER PASSWORD {}").format(
            sql.Identifier(aws.master), sql.Literal(scram_sha256_verifier(aws.master_password))))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(aws.database), sql.Identifier(aws.master)))
        administer_group_roles_as_their_creator(conn, aws.master)
    yield aws
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        for database in (aws.database, f"{aws.database}_dagster"):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    for login in (aws.service, aws.pipeline, aws.dagster, aws.master):
        drop_app_login(postgres_server.url, login)


def _is_deployment_variable(name: str) -> bool:
    return (name in SECRET_VARIABLES or name == APPLIED_MARKER
            or name.startswith(("PG", "DBT_PG_", "DAGSTER_"))
            or name.endswith((secret_source.SECRET_ID_SUFFIX, secret_source.QUERY_SUFFIX)))


def _migrate(env: dict[str, str]) -> None:
    """`xero-elt migrate` in a task given `env` (this process's own settings of that kind left out):
    the secrets applied first, as `xero-elt` does."""
    from orchestration.entrypoints import migrate

    base = {k: v for k, v in os.environ.items() if not _is_deployment_variable(k)}
    with mock.patch.dict(os.environ, {**base, **env}, clear=True):
        apply_secrets()
        assert migrate() == 0


def _role_state(server: DatabaseUrl, database: str, name: str) -> tuple:
    """Everything about role `name` (its pg_authid row: password included), the roles it may act as
    and its settings in `database`, read as the superuser. (From PostgreSQL 16 a CREATEROLE login also
    administers the roles it created, without acting as them: those grants are not counted.)"""
    with psycopg.connect(server.with_database(database).url) as conn:
        acts = "AND (m.set_option OR m.inherit_option)" if conn.info.server_version >= 160000 else ""
        return conn.execute(
            "SELECT to_jsonb(a) - 'oid', "  # noqa: S608 - a fixed clause
            "ARRAY(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = a.oid "
            f"{acts} ORDER BY 1), "
            "ARRAY(SELECT unnest(s.setconfig) FROM pg_db_role_setting s WHERE s.setrole = a.oid "
            "AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())) "
            "FROM pg_authid a WHERE rolname = %s", (name,)).fetchone()


def _table_owners(server: DatabaseUrl, database: str) -> set[str]:
    with psycopg.connect(server.with_database(database).url) as conn:
        rows = conn.execute("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'r' "
                            "AND relnamespace = 'public'::regnamespace").fetchall()
    return {owner for (owner,) in rows}


def test_scram_verifiers_are_compared_as_postgresql_makes_them(postgres_server):
    """The verifier `ensure_login` compares a password with is PostgreSQL's own, computed by the server."""
    name = f"xero_elt_test_scram_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} PASSWORD {}").format(sql.Identifier(name),
                                                                   sql.Literal(ODD_PASSWORD)))
        [verifier] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    assert scram_sha256_matches(ODD_PASSWORD, verifier)
    assert not scram_sha256_matches(ODD_PASSWORD + "x", verifier)
    assert not scram_sha256_matches(ODD_PASSWORD, None)
    assert not scram_sha256_matches(ODD_PASSWORD, "md5" + "0" * 32)


def test_the_migrate_task_makes_each_login_of_its_secret_and_never_alters_the_master(
    secretsmanager, rds_like, tmp_path, capsys
):
    """`xero-elt migrate` as deploy/aws/dagster-ecs.yaml runs it: the RDS-managed master secret (username
    and password only) completed by PGHOST/PGPORT/PGDATABASE, and the three login secrets. On a
    deployment whose Dagster storage an earlier migrate made as the master: each login created, a
    member of exactly its group role, the storage handed over to Dagster's login; then a rotated
    pipeline password set. The master itself is never altered."""
    aws, server = rds_like, rds_like.server
    dagster_db = f"{aws.database}_dagster"
    secretsmanager.create_secret(Name="rds!db-test", SecretString=json.dumps(
        {"username": aws.master, "password": aws.master_password}))
    passwords = {login: secrets.token_urlsafe(24) for login in (aws.service, aws.pipeline, aws.dagster)}
    for secret_id, login, database in (("xero/db/service", aws.service, None),
                                       ("xero/db/pipeline", aws.pipeline, None),
                                       ("xero/db/dagster", aws.dagster, dagster_db)):
        secretsmanager.create_secret(Name=secret_id,
                                     SecretString=aws.login_secret(login, passwords[login], database))
    # The test server has no TLS: every composed URL without the default sslmode=require.
    master_task = {"DATABASE_URL_SECRET_ID": "rds!db-test", "DATABASE_URL_SECRET_QUERY": "",
                   "PGHOST": server.host, "PGPORT": str(server.port), "PGDATABASE": aws.database,
                   "DAGSTER_HOME": str(tmp_path / "dagster"), "XERO_ELT_EMBEDDED_POSTGRES": "0",
                   "XERO_ELT_SECRETS_TTL_SECONDS": "0"}
    task = {**master_task}
    for variable, secret_id in (("APP_DATABASE_URL", "xero/db/service"),
                                ("PIPELINE_DATABASE_URL", "xero/db/pipeline"),
                                ("DAGSTER_POSTGRES_URL", "xero/db/dagster")):
        task |= {f"{variable}_SECRET_ID": secret_id, f"{variable}_SECRET_QUERY": ""}
    master_before = _role_state(server, aws.database, aws.master)

    # Before: the master secret alone (the task as it was), so Dagster's storage is the master's.
    _migrate(master_task)
    assert _table_owners(server, dagster_db) == {aws.master}
    capsys.readouterr()

    _migrate(task)
    lines = capsys.readouterr().out.splitlines()
    assert f"service login {aws.service} (APP_DATABASE_URL): created" in lines
    assert f"pipeline login {aws.pipeline} (PIPELINE_DATABASE_URL): created" in lines
    assert f"Dagster storage login {aws.dagster} (DAGSTER_POSTGRES_URL): created" in lines
    [storage] = [line for line in lines if line.startswith("Dagster storage database")]
    assert storage.startswith(f"Dagster storage database {dagster_db}: exists, its ")
    assert storage.endswith(f" tables handed over to {aws.dagster}, {aws.dagster} may create its tables in "
                            "schema public")
    assert _table_owners(server, dagster_db) == {aws.dagster}
    expected = {aws.service: (["xero_elt_app"], True, []),
                aws.pipeline: ([PIPELINE_ROLE], False, [f"role={PIPELINE_ROLE}"]),  # NOINHERIT
                aws.dagster: ([], True, [])}
    for login, (groups, inherit, settings) in expected.items():
        row, member_of, role_settings = _role_state(server, aws.database, login)
        assert (member_of, row["rolinherit"], role_settings) == (groups, inherit, settings), login
        assert not any(row[power] for power in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication",
                                                "rolbypassrls")), login
        assert scram_sha256_matches(passwords[login], row["rolpassword"]), login

    # A rotated pipeline secret: the next migrate sets the new password. The master cannot read the
    # stored verifiers (as on RDS), so it sets each login's password again, to its secret's.
    new_password = secrets.token_urlsafe(24)
    secretsmanager.put_secret_value(SecretId="xero/db/pipeline",
                                    SecretString=aws.login_secret(aws.pipeline, new_password))
    _migrate(task)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"pipeline login {aws.pipeline} (PIPELINE_DATABASE_URL): password set" in lines
    assert f"service login {aws.service} (APP_DATABASE_URL): password set" in lines
    assert (f"Dagster storage database {dagster_db}: exists, {aws.dagster} may create its tables in schema "
            "public") in lines
    row, _, _ = _role_state(server, aws.database, aws.pipeline)
    assert scram_sha256_matches(new_password, row["rolpassword"])
    assert not scram_sha256_matches(passwords[aws.pipeline], row["rolpassword"])
    # This server trusts 127.0.0.1 (the verifier above is what proves the password): the URL works.
    pipeline_url = server.with_database(aws.database).url.replace(
        f"//{server.user}@", f"//{aws.pipeline}:{new_password}@", 1)
    assert aws.pipeline in pipeline_url
    with psycopg.connect(pipeline_url) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (aws.pipeline, PIPELINE_ROLE)

    for secret in (new_password, aws.master_password, *passwords.values()):
        assert secret not in out
    # The master: same password, attributes and settings; its memberships are the migrations' (0003, 0006
    # make it a member of the roles it hands objects to), never Dagster's login, even for the hand-over.
    master_after = _role_state(server, aws.database, aws.master)
    assert master_after[0] == master_before[0] and master_after[2] == master_before[2] == []
    assert master_after[1] == sorted(["xero_elt_app", PIPELINE_ROLE])


def test_migrate_refuses_logins_it_cannot_make_right(migrated_database_url, postgres_server):
    """Each refusal changes nothing and names the variable or login; what it can make right it does."""
    owner = DatabaseUrl.parse(migrated_database_url)
    suffix = uuid.uuid4().hex[:8]
    app, pipeline, analyst, dagster = (f"xero_elt_test_{kind}_{suffix}" for kind in ("app", "pipe", "analyst",
                                                                                      "dag"))

    def url(user: str, password: str = "pw-1", database: str = owner.database,  # noqa: S107 - a test's
            host: str = owner.host) -> str:
        return f"postgresql://{user}:{password}@{host}:{owner.port}/{database}"

    def run(**env: str) -> list[str]:
        return list(ensure_logins(owner, env))

    def exists(name: str) -> bool:
        with psycopg.connect(postgres_server.url) as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None

    try:
        with pytest.raises(SettingsError, match=f"APP_DATABASE_URL and PIPELINE_DATABASE_URL both log in as "
                                                f"'{app}'"):
            run(APP_DATABASE_URL=url(app), PIPELINE_DATABASE_URL=url(app))
        assert not exists(app)  # checked before any change
        with pytest.raises(SettingsError, match="xero_elt_pipeline is a group role, not a login"):
            run(PIPELINE_DATABASE_URL=url(PIPELINE_ROLE))
        with pytest.raises(SettingsError, match="names database 'elsewhere', not DATABASE_URL's"):
            run(PIPELINE_DATABASE_URL=url(pipeline, database="elsewhere"))
        assert run(APP_DATABASE_URL=url(owner.user), DAGSTER_POSTGRES_URL=url(app, host="db.elsewhere")) == [
            f"service login {owner.user} (APP_DATABASE_URL): the migrating login itself, left as it is",
            f"Dagster storage login {app} (DAGSTER_POSTGRES_URL): on another server "
            f"(db.elsewhere:{owner.port}), left to its administrator"]
        with pytest.raises(SettingsError, match=f"login '{app}' does not exist: give its URL a password"):
            run(APP_DATABASE_URL=f"postgresql://{app}@{owner.host}:{owner.port}/{owner.database}")

        # An analyst's login named as the service's: a member of another role, refused.
        create_login(migrated_database_url, analyst, member_of=ANALYST_ROLE)
        with pytest.raises(SettingsError, match=f"login '{analyst}' is a member of {ANALYST_ROLE}, not of "
                                                "xero_elt_app alone"):
            run(APP_DATABASE_URL=url(analyst))
        # A bare login made by hand as the pipeline's: made a member, NOINHERIT, acting as the role here.
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(pipeline)))
        assert run(PIPELINE_DATABASE_URL=url(pipeline)) == [
            f"pipeline login {pipeline} (PIPELINE_DATABASE_URL): password set, made a member of "
            f"{PIPELINE_ROLE}, made NOINHERIT, set to act as {PIPELINE_ROLE} in {owner.database}"]
        assert run(PIPELINE_DATABASE_URL=url(pipeline)) == [
            f"pipeline login {pipeline} (PIPELINE_DATABASE_URL): unchanged"]
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(pipeline)))
        with pytest.raises(SettingsError, match=f"login '{pipeline}' has CREATEDB"):
            run(PIPELINE_DATABASE_URL=url(pipeline, "pw-2"))

        # Dagster's storage holding a table of a third role: refused, nothing handed over; the migrating
        # login's own tables are.
        storage = url(dagster, database=f"{owner.database}_dag")
        assert run(DAGSTER_POSTGRES_URL=storage) == [
            f"Dagster storage login {dagster} (DAGSTER_POSTGRES_URL): created"]
        assert ensure_dagster_storage(owner, DatabaseUrl(storage)) == (
            f"Dagster storage database {owner.database}_dag: created, {dagster} may create its tables in "
            "schema public")
        with psycopg.connect(owner.with_database(f"{owner.database}_dag").url, autocommit=True) as conn:
            conn.execute("CREATE TABLE runs (id serial); CREATE TABLE kept (i int)")
            conn.execute(sql.SQL("ALTER TABLE kept OWNER TO {}").format(sql.Identifier(analyst)))
            with pytest.raises(SettingsError, match=f"holds 1 tables of other roles than its login "
                                                    f"'{dagster}' and the migrating one \\(kept\\)"):
                ensure_dagster_storage(owner, DatabaseUrl(storage))
            assert _owners(conn) == {("kept", analyst), ("runs", owner.user)}
            conn.execute("DROP TABLE kept")
            assert ensure_dagster_storage(owner, DatabaseUrl(storage)) == (
                f"Dagster storage database {owner.database}_dag: exists, its 1 tables handed over to "
                f"{dagster}, {dagster} may create its tables in schema public")
            assert _owners(conn) == {("runs", dagster)}
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(f"{owner.database}_dag")))
        for name in (app, pipeline, analyst, dagster):
            drop_app_login(postgres_server.url, name)


def _owners(conn: psycopg.Connection) -> set[tuple[str, str]]:
    return set(conn.execute("SELECT relname::text, pg_get_userbyid(relowner) FROM pg_class "
                            "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall())
