"""Secret settings read at run time from AWS Secrets Manager, cached per secret id, rotation-friendly.

A deployment gives a process secret *ids*, never secret values: for each variable V of
`SECRET_VARIABLES`, `V_SECRET_ID=<secret id or ARN>[#<json key>]` makes `apply_secrets()` set V from
that secret before the settings are read (`Settings.from_env`, `orchestration.settings`...):

- `#key`: the secret is a JSON object and V is the (string) value of `key`;
- no `#key`: V is the whole SecretString, except for the database URLs (`DATABASE_URLS`),
  whose secret is an RDS-style JSON secret (username, password, host, dbname, optional port: what
  Secrets Manager's RDS rotation keeps up to date) from which the URL is composed, with `V_SECRET_QUERY`
  as its query (empty for none; unset: `DATABASE_URLS`' default, `sslmode=require`, and for Dagster's
  storage also sessions in UTC). A field the secret lacks among host, port and dbname is taken from
  libpq's `PGHOST`, `PGPORT` and `PGDATABASE` when set: RDS's managed master secret holds only the
  username and password (the migrate task names its server so). The secret's own fields win.

Setting both V and V_SECRET_ID is refused (which one wins would be a guess), except when V was set by
an earlier `apply_secrets` (listed in `APPLIED_MARKER`, which child processes inherit).

Each secret is read once per `XERO_ELT_SECRETS_TTL_SECONDS` (default 300) however many variables
use it; after that the next `apply_secrets()` reads it again and so picks up a rotated value.
`refresh_secrets()` reads them at once (e.g. after a database authentication failure).

`python -m oauth_service.secret_source COMMAND [ARG...]` applies the secrets and then becomes COMMAND:
for programs that read their settings before any code of ours runs (dagster-daemon and
dagster-webserver read DAGSTER_POSTGRES_URL when they start).

Every failure is a `SettingsError` naming the variable and the secret id, never a secret value, and
nothing here logs a value. boto3 is imported only when some V_SECRET_ID is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from oauth_service.settings import SettingsError, whole_number

log = logging.getLogger("oauth_service.secret_source")

SECRET_ID_SUFFIX = "_SECRET_ID"  # noqa: S105 - a variable name suffix
QUERY_SUFFIX = "_SECRET_QUERY"
TTL_VARIABLE = "XERO_ELT_SECRETS_TTL_SECONDS"
DEFAULT_TTL_SECONDS = 300
# Comma-separated names of the variables set from secrets: a later call (in this process or a child
# that inherited the environment) may overwrite them without that counting as "both V and V_SECRET_ID".
APPLIED_MARKER = "XERO_ELT_SECRETS_APPLIED"


@dataclass(frozen=True)
class UrlForm:
    """How a database URL is composed from an RDS secret: its scheme and its default query."""

    scheme: str
    default_query: str


_TLS = "sslmode=require"  # RDS accepts TLS: the login and its password must not travel in clear
DATABASE_URLS: dict[str, UrlForm] = {
    "DATABASE_URL": UrlForm("postgresql", _TLS),
    "APP_DATABASE_URL": UrlForm("postgresql", _TLS),
    # dagster-postgres speaks psycopg2 only, and its storage needs sessions in UTC (see
    # orchestration.settings.DatabaseUrl.in_utc, which leaves a URL with these options as it is).
    "DAGSTER_POSTGRES_URL": UrlForm("postgresql+psycopg2", f"{_TLS}&options=-c%20timezone%3DUTC"),
    # Read by `xero-elt migrate` only, which creates that login; the pipeline's own processes get it
    # as DATABASE_URL.
    "PIPELINE_DATABASE_URL": UrlForm("postgresql", _TLS),
}
SECRET_VARIABLES: tuple[str, ...] = (
    "XERO_CLIENT_ID",
    "XERO_CLIENT_SECRET",
    "XERO_WEBHOOK_KEY",
    "TOKEN_ENCRYPTION_KEY",
    "AUTH_JWT_SECRET",
    *DATABASE_URLS,
)
RDS_REQUIRED_FIELDS = ("username", "password", "host", "dbname")
# Fields an RDS secret may leave to the environment (never the login or its password).
LIBPQ_DEFAULTS = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE"}
RDS_POSTGRES_ENGINES = {"postgres", "postgresql", "aurora-postgresql"}


@dataclass(frozen=True)
class SecretRef:
    """Where variable `variable` comes from: secret `secret_id`, and its JSON key `key` if any."""

    variable: str
    secret_id: str
    key: str | None

    def error(self, problem: str) -> SettingsError:
        return SettingsError(f"{self.variable}: secret {self.secret_id!r} {problem}")


@dataclass(frozen=True)
class _CachedSecret:
    secret_string: str
    read_at: float  # _clock() time


_cache: dict[str, _CachedSecret] = {}
_cache_lock = threading.Lock()
_client: Any = None  # the boto3 Secrets Manager client, made on first use
_clock = time.monotonic


# ---------------------------------------------------------------------- public API
def apply_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set every variable V that has a V_SECRET_ID from its secret (cached for the TTL) and return
    the names set, in `SECRET_VARIABLES` order; [] (and boto3 never imported) when there is none."""
    env = os.environ if environ is None else environ
    refs = secret_refs(env)
    if not refs:
        return []
    ttl = _ttl_seconds(env)
    # One read per secret id, however many variables use it (each its own key).
    secrets_by_id: dict[str, str] = {}
    for ref in refs:
        if ref.secret_id not in secrets_by_id:
            secrets_by_id[ref.secret_id] = _secret_string(ref, ttl)
    try:
        values = {ref.variable: _value(ref, secrets_by_id[ref.secret_id], env) for ref in refs}
    except SettingsError:
        _forget(secrets_by_id)  # so that the next call sees the secret fixed at once, not after the TTL
        raise
    # Only once every value is known, so that a failure leaves the environment as it was.
    env.update(values)
    previously_applied = _applied_names(env)
    env[APPLIED_MARKER] = ",".join(sorted(previously_applied | values.keys()))
    return list(values)


def refresh_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """`apply_secrets` reading every secret afresh, whatever the TTL: e.g. after the database refused
    a password that a rotation has just changed."""
    with _cache_lock:
        _cache.clear()
    return apply_secrets(environ)


def secret_refs(environ: Mapping[str, str]) -> list[SecretRef]:
    """The variables to read from secrets (those with a non-blank V_SECRET_ID), checked."""
    refs = []
    problems = []
    applied = _applied_names(environ)
    for variable in SECRET_VARIABLES:
        reference = environ.get(variable + SECRET_ID_SUFFIX, "").strip()
        if not reference:
            continue
        secret_id, has_key, key = reference.partition("#")
        if not secret_id or (has_key and not key):
            problems.append(
                f"{variable}{SECRET_ID_SUFFIX} must be '<secret id or ARN>' or "
                f"'<secret id or ARN>#<json key>', got {reference!r}"
            )
            continue
        if environ.get(variable, "").strip() and variable not in applied:
            problems.append(
                f"{variable} and {variable}{SECRET_ID_SUFFIX} (secret {secret_id!r}) are both set; set one"
            )
            continue
        if has_key and variable in DATABASE_URLS and (variable + QUERY_SUFFIX) in environ:
            problems.append(
                f"{variable}{QUERY_SUFFIX} applies only to a URL composed from an RDS secret, not to the "
                f"URL held in key {key!r} of secret {secret_id!r}"
            )
            continue
        refs.append(SecretRef(variable, secret_id, key if has_key else None))
    if problems:
        raise SettingsError("Invalid secret settings:\n  - " + "\n  - ".join(problems))
    return refs


def rds_database_url(ref: SecretRef, secret: dict[str, Any], scheme: str, query: str) -> str:
    """The URL of an RDS-style secret's login: user and password URL-quoted (any character allowed)."""
    missing = [name for name in RDS_REQUIRED_FIELDS if not _is_text(secret.get(name))]
    if missing:
        from_env = [LIBPQ_DEFAULTS[name] for name in missing if name in LIBPQ_DEFAULTS]
        hint = f", or set {' and '.join(from_env)} in the environment" if from_env else ""
        raise ref.error(
            f"lacks RDS field(s) {', '.join(missing)} (an RDS secret holds username, password, host, "
            f"dbname and port{hint}; or give a '#key' holding the whole URL)"
        )
    engine = secret.get("engine")
    if engine is not None and engine not in RDS_POSTGRES_ENGINES:
        raise ref.error(f"is an RDS secret of engine {engine!r}, not PostgreSQL")
    port = secret.get("port", 5432)
    if isinstance(port, bool) or not str(port).isdigit():  # RDS writes it as a number or a string
        raise ref.error("has an RDS field port that is not a port number")
    host = secret["host"]
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    user = quote(secret["username"], safe="")
    password = quote(secret["password"], safe="")
    url = f"{scheme}://{user}:{password}@{host}:{port}/{quote(secret['dbname'], safe='')}"
    return f"{url}?{query}" if query else url


# ---------------------------------------------------------------------- reading secrets
def _ttl_seconds(environ: Mapping[str, str]) -> float:
    return whole_number(environ, TTL_VARIABLE, DEFAULT_TTL_SECONDS, unit="seconds")


def _secret_string(ref: SecretRef, ttl: float) -> str:
    """The SecretString of `ref.secret_id`: from the cache while younger than `ttl`, else read."""
    with _cache_lock:
        cached = _cache.get(ref.secret_id)
        if cached is not None and _clock() - cached.read_at < ttl:
            return cached.secret_string
    secret_string = _read_secret(ref)
    with _cache_lock:
        _cache[ref.secret_id] = _CachedSecret(secret_string, _clock())
    return secret_string


def _forget(secret_ids: Iterable[str]) -> None:
    with _cache_lock:
        for secret_id in secret_ids:
            _cache.pop(secret_id, None)


def _read_secret(ref: SecretRef) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = _secrets_client()
        response = client.get_secret_value(SecretId=ref.secret_id)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        if code == "ResourceNotFoundException":
            region = client.meta.region_name
            raise ref.error(f"does not exist in AWS Secrets Manager (region {region})") from None
        # AWS's messages name the secret and the refusal, never its value.
        message = error.get("Message", "")
        raise ref.error(f"could not be read from AWS Secrets Manager: {code}: {message}") from None
    except BotoCoreError as exc:  # no region or credentials, endpoint unreachable...
        raise ref.error(f"could not be read from AWS Secrets Manager: {exc}") from None
    if "SecretString" not in response:
        raise ref.error("holds binary data (SecretBinary), not a SecretString")
    log.info("read secret %s (version %s)", ref.secret_id, response.get("VersionId"))
    return response["SecretString"]


def _secrets_client() -> Any:
    """One client per process (connections reused); region and credentials from the standard AWS
    environment (AWS_REGION / AWS_DEFAULT_REGION, the role of the Lambda, task or instance)."""
    global _client
    if _client is None:
        import boto3

        logging.getLogger("botocore.parsers").addFilter(_drop_response_bodies)
        _client = boto3.client("secretsmanager")
    return _client


def _drop_response_bodies(record: logging.LogRecord) -> bool:
    """botocore logs every response body at DEBUG, and GetSecretValue's holds the secret: dropped (for
    every AWS service, which costs only debug output)."""
    return not str(record.msg).startswith("Response body")


# ---------------------------------------------------------------------- values
def _value(ref: SecretRef, secret_string: str, environ: Mapping[str, str]) -> str:
    if ref.key is not None:
        document = _json_object(ref, secret_string)
        if ref.key not in document:
            raise ref.error(f"has no JSON key {ref.key!r}")
        value = document[ref.key]
        if not _is_text(value):
            raise ref.error(f"holds no text under JSON key {ref.key!r} ({type(value).__name__})")
        return value
    form = DATABASE_URLS.get(ref.variable)
    if form is None:
        return secret_string
    query = environ.get(ref.variable + QUERY_SUFFIX, form.default_query).strip()
    secret = _with_libpq_defaults(ref, _json_object(ref, secret_string), environ)
    return rds_database_url(ref, secret, form.scheme, query)


def _with_libpq_defaults(ref: SecretRef, secret: dict[str, Any],
                         environ: Mapping[str, str]) -> dict[str, Any]:
    """`secret` with the host, port and dbname it lacks taken from PGHOST, PGPORT and PGDATABASE."""
    taken = {}
    for field, variable in LIBPQ_DEFAULTS.items():
        value = environ.get(variable, "").strip()
        absent = field not in secret if field == "port" else not _is_text(secret.get(field))
        if value and absent:
            taken[field] = value
    host = taken.get("host", "")
    if "," in host or host.startswith("/"):
        # libpq takes host lists and socket folders; a URL composed from them would mean another thing.
        raise ref.error(f"lacks field host, and PGHOST={host!r} is not one host name or address")
    if not taken.get("port", "0").isdigit():
        raise ref.error(f"lacks field port, and PGPORT={taken['port']!r} is not a port number")
    return {**secret, **taken}


def _json_object(ref: SecretRef, secret_string: str) -> dict[str, Any]:
    try:
        document = json.loads(secret_string)
    except ValueError:
        # Not the exception's text: it quotes the document, i.e. the secret.
        raise ref.error("is not valid JSON") from None
    if not isinstance(document, dict):
        raise ref.error(f"is JSON but not an object ({type(document).__name__})")
    return document


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _applied_names(environ: Mapping[str, str]) -> set[str]:
    return {name for name in environ.get(APPLIED_MARKER, "").split(",") if name}


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Apply the secrets, then exec COMMAND (same process id, so signals reach it) with them set."""
    command = sys.argv[1:] if argv is None else argv
    if not command:
        print("usage: python -m oauth_service.secret_source COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        apply_secrets()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 1
    os.execvp(command[0], command)  # noqa: S606 - the operator's own command
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main())
