"""Helpers and constants of the OAuth service tests (fixtures are in conftest.py)."""

import logging
import socket
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from psycopg import sql
from sqlalchemy import text

from oauth_service.db import ANALYST_ROLE, APP_ROLE, KPI_READER_ROLE, PIPELINE_ROLE
from oauth_service.settings import generate_key
from tests.secret_watch import LogSink

CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
APP_RETURN_URL = "https://app.example.test/settings/xero"
APP_ORIGIN = "https://app.example.test"
JWT_SECRET = "test-jwt-secret-" + uuid.uuid4().hex
WEBHOOK_KEY = "test-webhook-key-" + uuid.uuid4().hex
TOKEN_KEY = generate_key()
SANDBOX_TENANTS = 8
SECOND_XERO_USER = "second-xero-user"

# Every token a test sees; the last test checks none of them is in clear in the database or the logs.
SEEN_TOKENS: set[str] = set()
# Other secrets seen during the run (authorization codes, PKCE verifiers, database passwords): the last
# test checks none of them is in the database or the logs either.
SEEN_SECRETS: set[str] = set()

_LOGGERS = (
    "oauth_service",
    "uvicorn",
    "uvicorn.error",
    "requests_oauthlib",
    "oauthlib",
    "urllib3",
    "httpx",
    "httpcore",
    "xero_sandbox",
    "sqlalchemy.engine",
    "mangum",
)


LOG_SINK = LogSink(logging.DEBUG)  # the service's own loggers at DEBUG (see conftest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env_for(sandbox_url: str, database_url: str, port: int, app_database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "APP_DATABASE_URL": app_database_url,
        "XERO_CLIENT_ID": CLIENT_ID,
        "XERO_CLIENT_SECRET": CLIENT_SECRET,
        "XERO_REDIRECT_URI": f"http://127.0.0.1:{port}/xero/auth/callback",
        "AUTH_JWT_SECRET": JWT_SECRET,
        "APP_RETURN_URL": APP_RETURN_URL,
        "APP_ORIGIN": APP_ORIGIN,
        "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
        "XERO_WEBHOOK_KEY": WEBHOOK_KEY,
        **sandbox_urls(sandbox_url),
    }


def sandbox_urls(base: str) -> dict[str, str]:
    return {
        "XERO_AUTHORIZE_URL": f"{base}/identity/connect/authorize",
        "XERO_TOKEN_URL": f"{base}/connect/token",
        "XERO_REVOCATION_URL": f"{base}/connect/revocation",
        "XERO_CONNECTIONS_URL": f"{base}/connections",
        "XERO_API_URL": f"{base}/api.xro/2.0",
    }


def user_jwt(
    user_id: str, *, secret: str = JWT_SECRET, audience: str = "authenticated", ttl: int = 600, **extra
) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "aud": audience, "role": "authenticated", "iat": now, "exp": now + ttl, **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


class Browser:
    """A user's browser: cookie jar, bearer JWT for the web app's calls, and the OAuth dance."""

    def __init__(self, service, user_id: str | None = None):
        self.service = service
        self.user_id = user_id or str(uuid.uuid4())
        self.http = httpx.Client(timeout=30, follow_redirects=False)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {user_jwt(self.user_id)}"}

    def initiate(self) -> dict:
        r = self.http.post(f"{self.service.url}/xero/auth/initiate", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def authorize(self, authorization_url: str, **sandbox_params: str) -> str:
        """Xero's login and consent (auto in the sandbox); returns the callback URL Xero redirects to."""
        url = authorization_url
        for k, v in sandbox_params.items():
            url += f"&{k}={v}"
        r = self.http.get(url)
        assert r.status_code == 302, r.text
        location = r.headers["location"]
        assert location.startswith(f"{self.service.url}/xero/auth/callback")
        SEEN_SECRETS.update(parse_qs(urlsplit(location).query).get("code", []))
        return location

    def callback(self, url: str, **headers: str) -> dict[str, list[str]]:
        r = self.http.get(url, headers=headers)
        assert r.status_code == 302, r.text
        location = r.headers["location"]
        assert location.startswith(APP_RETURN_URL + "?")
        return parse_qs(urlsplit(location).query)

    def connect(self, tenants: list[str] | None = None) -> dict[str, list[str]]:
        init = self.initiate()
        params = {"sandbox_tenants": ",".join(tenants)} if tenants else {}
        return self.callback(self.authorize(init["authorizationUrl"], **params))

    def connections(self) -> list[dict]:
        r = self.http.get(f"{self.service.url}/xero/connections", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()["connections"]

    def close(self) -> None:
        self.http.close()


def stored_tokens(engine, cipher, tenant_id: str) -> tuple[str | None, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT access_token, refresh_token FROM app.xero_connections WHERE tenant_id = :t"),
            {"t": tenant_id},
        ).one()
    access = cipher.decrypt(row.access_token) if row.access_token else None
    refresh = cipher.decrypt(row.refresh_token) if row.refresh_token else None
    SEEN_TOKENS.update(t for t in (access, refresh) if t)
    return access, refresh


def api_get(sandbox, token: str, tenant_id: str, path: str = "Invoices") -> httpx.Response:
    SEEN_TOKENS.add(token)
    return httpx.get(
        f"{sandbox.url}/api.xro/2.0/{path}",
        headers={
            "Authorization": f"Bearer {token}",
            "xero-tenant-id": tenant_id,
            "Accept": "application/json",
        },
        timeout=30,
    )


def audit_rows(engine, action: str, **where: str) -> list:
    clauses = " ".join(f"AND {k} = :{k}" for k in where)
    with engine.connect() as conn:
        return conn.execute(
            text(f"SELECT * FROM app.audit_log WHERE action = :action {clauses} ORDER BY timestamp"),  # noqa: S608
            {"action": action, **where},
        ).all()


def expire_in_db(engine, tenant_id: str) -> None:
    """Our record of the token's expiry moves into the past (as 30 minutes passing would do)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE app.xero_connections SET token_expires_at = now() - interval '1 minute' "
                "WHERE tenant_id = :t"
            ),
            {"t": tenant_id},
        )


def sandbox_admin(sandbox, method: str, path: str, **kwargs) -> httpx.Response:
    r = httpx.request(method, f"{sandbox.url}/__sandbox/{path}", timeout=30, **kwargs)
    assert r.status_code < 400, r.text
    return r


def xero_connection_ids(sandbox) -> set[str]:
    """The ids of every connection the sandbox (Xero) holds."""
    return {c["id"] for c in sandbox_admin(sandbox, "GET", "identity").json()["connections"]}


def refresh_worker(env: dict, tenant_id: str, barrier, queue, log_path: str) -> None:
    """One pipeline process: its own vault, waits for the others, then asks for a token."""
    import logging as _logging
    import os as _os

    _logging.basicConfig(filename=log_path, level=_logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
    from oauth_service.settings import Settings
    from oauth_service.vault import TokenVault

    vault = TokenVault(Settings.from_env(env), actor=f"worker-{_os.getpid()}")
    try:
        barrier.wait(timeout=120)
        queue.put(("ok", vault.access_token_for(tenant_id)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        vault.close()


def api_gateway_event(method: str, path: str, headers: dict[str, str] | None = None) -> dict:
    """An API Gateway HTTP API (payload 2.0) event, as the Lambda receives it."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abc123.execute-api.eu-west-1.amazonaws.com", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc123",
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "20/May/2026:12:00:00 +0000",
            "timeEpoch": 1779278400000,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "pytest",
            },
        },
        "isBase64Encoded": False,
    }


def administer_group_roles_as_their_creator(conn, login: str) -> None:
    """Give a CREATEROLE login (RDS's master) what it has in production on the product's group roles.

    From PostgreSQL 16 such a login may grant only roles it administers, and PostgreSQL gives a role's
    creator ADMIN on it (without INHERIT or SET). In production the master created them; on a test
    server a superuser may have (another test's migration): the same grant, made by hand. On 15, a
    CREATEROLE login grants any role, and nothing is needed."""
    if conn.info.server_version < 160000:
        return
    for role in (APP_ROLE, ANALYST_ROLE, KPI_READER_ROLE, PIPELINE_ROLE):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE").format(
                sql.Identifier(role), sql.Identifier(login)))
