"""Settings of the OAuth service and the token vault, read from environment variables.

`Settings.from_env()` reads the variables of ARCHITECTURE.md, checks every one of them and raises a
single `SettingsError` that lists every problem found (variable name and what is wrong).

`DEMO_MODE=1` is the explicit demo mode: sandbox client credentials, demo return URL and origin,
and (when absent) an ephemeral token key and a well-known demo JWT secret. It is logged loudly and
confined to this machine: the service refuses it unless every XERO_*_URL is loopback (the sandbox),
and then listens on loopback only (server.py). Nothing in it is fit for real Xero tenants.

Rules that tie several settings together live in `Settings.rule_problems`, used by `from_env` and,
for settings built by hand, by `check_service_configured` (which `create_app` calls).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger("oauth_service.settings")

XERO_AUTHORIZE_URL = "https://login.xero.com/identity/connect/authorize"
XERO_TOKEN_URL = "https://identity.xero.com/connect/token"  # noqa: S105 - a URL
XERO_REVOCATION_URL = "https://identity.xero.com/connect/revocation"
XERO_CONNECTIONS_URL = "https://api.xero.com/connections"
XERO_API_URL = "https://api.xero.com/api.xro/2.0"

# Apps created from 2 March 2026 must use the granular scopes. openid/profile/email are not needed
# by the pipeline (the user is known from the web app's JWT), so they are not requested.
DEFAULT_SCOPES: tuple[str, ...] = (
    "offline_access",
    "accounting.invoices.read",
    "accounting.payments.read",
    "accounting.contacts.read",
    "accounting.settings.read",
)

# The Xero endpoints, the one list of them: variable name → default. Each variable's Settings field is
# its name in lower case (XERO_TOKEN_URL → xero_token_url).
XERO_URL_DEFAULTS: dict[str, str] = {
    "XERO_AUTHORIZE_URL": XERO_AUTHORIZE_URL,
    "XERO_TOKEN_URL": XERO_TOKEN_URL,
    "XERO_REVOCATION_URL": XERO_REVOCATION_URL,
    "XERO_CONNECTIONS_URL": XERO_CONNECTIONS_URL,
    "XERO_API_URL": XERO_API_URL,
}

DEMO_CLIENT_ID = "sandbox-client-id"
DEMO_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 - the sandbox's public demo credentials
DEMO_APP_RETURN_URL = "http://localhost:3000/settings/xero"
DEMO_APP_ORIGIN = "http://localhost:3000"
# Used only in DEMO_MODE when no AUTH_JWT_SECRET/AUTH_JWKS_URL is given; logged loudly.
DEMO_JWT_SECRET = "xero-elt-demo-mode-insecure-jwt-secret"  # noqa: S105

AUTH_REQUIRED = (
    "AUTH_JWT_SECRET or AUTH_JWKS_URL is required: the service refuses to start without a way to "
    "check the web app's bearer JWT (or set DEMO_MODE=1 for the local demo)"
)
APP_LOGIN_REQUIRED = (
    "APP_DATABASE_URL is required outside DEMO_MODE: the service connects as a dedicated login that owns "
    "nothing, never as the app schema's owner. Create one with `python -m oauth_service create-app-login "
    "NAME` (with DATABASE_URL = the owner) and set APP_DATABASE_URL to the URL it prints"
)

_DEMO_WARNED = False
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """One or more missing or malformed settings; the message names every variable at fault."""


def whole_number(environ: Mapping[str, str], variable: str, default: int, *, low: int = 0,
                 high: int | None = None, unit: str = "") -> int:
    """The whole number `variable` holds, `default` when it is unset or blank; else a SettingsError
    naming it, its bounds and what it holds. (xero_source, a package of its own, has its own.)"""
    raw = str(environ.get(variable, "")).strip()
    if not raw:
        return default
    if raw.isdigit() and low <= int(raw) and (high is None or int(raw) <= high):
        return int(raw)
    bounds = f" from {low} to {high}" if high is not None else f" of at least {low}" if low else ""
    raise SettingsError(f"{variable} must be a whole number{unit and ' of ' + unit}{bounds}, not {raw!r}")


def is_loopback_host(host: str) -> bool:
    """THE loopback test (demo confinement, plain http to the sandbox): `localhost` or a loopback IP
    (127.0.0.0/8, ::1), any case, IPv6 with or without brackets. Not names under `.localhost`: where
    they resolve is up to the machine's resolver, possibly a DNS server."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def _check_fernet_key(key: str) -> str | None:
    """None when `key` is a Fernet key (32 bytes, URL-safe base64), else what is wrong."""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "is not URL-safe base64"
    if len(raw) != 32:
        return f"decodes to {len(raw)} bytes, expected 32"
    return None


def check_keys(value: str | None) -> tuple[str, ...]:
    """TOKEN_ENCRYPTION_KEY parsed into its keys (newest first); SettingsError when malformed."""
    keys = tuple(k.strip() for k in (value or "").split(",") if k.strip())
    if not keys:
        raise SettingsError("TOKEN_ENCRYPTION_KEY is required (comma-separated keys, newest first)")
    problems = [
        f"TOKEN_ENCRYPTION_KEY key #{i} {p}" for i, k in enumerate(keys, 1) if (p := _check_fernet_key(k))
    ]
    if problems:
        raise SettingsError("; ".join(problems))
    return keys


def generate_key() -> str:
    """A new TOKEN_ENCRYPTION_KEY entry (32 random bytes, URL-safe base64: the Fernet format)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)  # may hold a password
    token_encryption_keys: tuple[str, ...] = field(repr=False)
    xero_client_id: str = ""
    xero_client_secret: str = field(default="", repr=False)
    xero_redirect_uri: str | None = None
    xero_scopes: tuple[str, ...] = DEFAULT_SCOPES
    xero_authorize_url: str = XERO_AUTHORIZE_URL
    xero_token_url: str = XERO_TOKEN_URL
    xero_revocation_url: str = XERO_REVOCATION_URL
    xero_connections_url: str = XERO_CONNECTIONS_URL
    xero_api_url: str = XERO_API_URL
    auth_jwt_secret: str | None = field(default=None, repr=False)
    auth_jwks_url: str | None = None
    auth_jwt_audience: str = "authenticated"
    app_return_url: str = DEMO_APP_RETURN_URL
    app_origin: str | None = None
    xero_webhook_key: str | None = field(default=None, repr=False)
    demo_mode: bool = False
    # How long an OAuth `state` stays usable, and how close to expiry a token gets refreshed.
    state_ttl_seconds: int = 600
    # OAUTH_STATE_COOKIE=required (default outside demo mode): the callback must come from the browser
    # that called initiate (HttpOnly cookie). `optional`: checked only when present.
    state_cookie_required: bool = True
    refresh_margin_seconds: int = 300
    http_timeout_seconds: float = 20.0
    # Anonymous rejections (bad webhook signature, callbacks with no valid state) audited individually
    # per source IP per minute; beyond that they are counted into one summary row per IP and minute.
    anonymous_audit_per_minute: int = 10
    # APP_DATABASE_URL: the login the service and the vault use (member of xero_elt_app, owns nothing).
    # Required by the HTTP service outside demo mode. Unset (the pipeline's vault, the demo): DATABASE_URL
    # with `SET ROLE xero_elt_app` on each connection (see db.app_engine).
    app_database_url: str | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, for_service: bool = True) -> Settings:
        """`for_service=False` is the token vault's view (the pipeline): it needs the database, the
        keys and the Xero app, not the HTTP service's caller authentication, redirect or web app."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        demo_raw = (get("DEMO_MODE") or "").lower()
        if demo_raw in _TRUE:
            demo = True
        elif demo_raw in _FALSE:
            demo = False
        else:
            problems.append(f"DEMO_MODE must be 1 or 0, got {env.get('DEMO_MODE')!r}")
            demo = False

        database_url = get("DATABASE_URL")
        if database_url is None:
            problems.append("DATABASE_URL is required (postgresql://user:password@host:port/database)")
        else:
            problem = _database_url_problem(database_url)
            if problem:
                problems.append(f"DATABASE_URL {problem}")
        # The service's and the vault's own login (member of xero_elt_app, owns nothing); migrations
        # keep using DATABASE_URL (the schema owner).
        app_database_url = get("APP_DATABASE_URL")
        if app_database_url is not None:
            problem = _database_url_problem(app_database_url)
            if problem:
                problems.append(f"APP_DATABASE_URL {problem}")

        # -- Xero application
        client_id = get("XERO_CLIENT_ID") or (DEMO_CLIENT_ID if demo else None)
        client_secret = get("XERO_CLIENT_SECRET") or (DEMO_CLIENT_SECRET if demo else None)
        if client_id is None:
            problems.append("XERO_CLIENT_ID is required (the Xero app's client id)")
        if client_secret is None:
            problems.append("XERO_CLIENT_SECRET is required (the Xero app's client secret)")
        redirect_uri = get("XERO_REDIRECT_URI")
        if redirect_uri is None and not demo and for_service:
            problems.append(
                "XERO_REDIRECT_URI is required (this service's …/xero/auth/callback URL, "
                "as registered on the Xero app)"
            )
        elif redirect_uri is not None:
            problem = _url_problem(redirect_uri, allow_loopback_http=True)
            if problem:
                problems.append(f"XERO_REDIRECT_URI {problem}")

        scopes_raw = get("XERO_SCOPES")
        scopes = DEFAULT_SCOPES
        if scopes_raw is not None:
            scopes = tuple(s for s in scopes_raw.replace(",", " ").split() if s)
            if not scopes:
                problems.append("XERO_SCOPES is empty; give space-separated scopes or leave it unset")
            elif "offline_access" not in scopes:
                problems.append("XERO_SCOPES must include offline_access (no refresh token without it)")

        urls: dict[str, str] = {}  # Settings field → value
        for name, default in XERO_URL_DEFAULTS.items():
            value = (get(name) or default).rstrip("/")
            problem = _url_problem(value, allow_loopback_http=True)
            if problem:
                problems.append(f"{name} {problem}")
            urls[name.lower()] = value

        # -- caller authentication
        jwt_secret = get("AUTH_JWT_SECRET")
        jwks_url = get("AUTH_JWKS_URL")
        audience = get("AUTH_JWT_AUDIENCE") or "authenticated"
        if jwt_secret and jwks_url:
            problems.append("AUTH_JWT_SECRET and AUTH_JWKS_URL are both set; set exactly one")
        if jwks_url:
            problem = _url_problem(jwks_url, allow_loopback_http=True)
            if problem:
                problems.append(f"AUTH_JWKS_URL {problem}")
        if jwt_secret and len(jwt_secret) < 32 and not demo:
            problems.append("AUTH_JWT_SECRET is too short (at least 32 characters)")
        if not jwt_secret and not jwks_url and demo:
            jwt_secret = DEMO_JWT_SECRET

        # -- web app
        return_url = get("APP_RETURN_URL") or (DEMO_APP_RETURN_URL if demo else None)
        if return_url is None:
            if for_service:
                problems.append("APP_RETURN_URL is required (where the callback sends the browser back)")
        else:
            problem = _url_problem(return_url, allow_loopback_http=True)
            if problem:
                problems.append(f"APP_RETURN_URL {problem}")
        origin = get("APP_ORIGIN") or (DEMO_APP_ORIGIN if demo else None)
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                problems.append(f"APP_ORIGIN must be an origin like https://app.example.com, got {origin!r}")
            origin = origin.rstrip("/")

        # -- token encryption
        keys_raw = get("TOKEN_ENCRYPTION_KEY")
        keys: tuple[str, ...] = ()
        if keys_raw is None:
            if demo:
                keys = (generate_key(),)
                log.warning(
                    "DEMO MODE: TOKEN_ENCRYPTION_KEY is unset; using an ephemeral key. Tokens stored now "
                    "cannot be read by any other process or after a restart."
                )
            else:
                problems.append(
                    "TOKEN_ENCRYPTION_KEY is required: comma-separated keys, newest first, each 32 random "
                    "bytes in URL-safe base64 (python -c 'from oauth_service.settings import generate_key;"
                    " print(generate_key())')"
                )
        else:
            keys = tuple(k.strip() for k in keys_raw.split(",") if k.strip())
            for index, key in enumerate(keys, start=1):
                problem = _check_fernet_key(key)
                if problem:
                    problems.append(f"TOKEN_ENCRYPTION_KEY key #{index} {problem}")
            if not keys:
                problems.append("TOKEN_ENCRYPTION_KEY holds no key")

        webhook_key = get("XERO_WEBHOOK_KEY")

        def int_setting(name: str, default: int, minimum: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name} must be an integer number of seconds, got {raw!r}")
                return default
            if value < minimum:
                problems.append(f"{name} must be at least {minimum}, got {value}")
            return value

        cookie_raw = (get("OAUTH_STATE_COOKIE") or ("optional" if demo else "required")).lower()
        if cookie_raw not in ("required", "optional"):
            problems.append(f"OAUTH_STATE_COOKIE must be 'required' or 'optional', got {cookie_raw!r}")
        anonymous_audit = int_setting("AUDIT_ANONYMOUS_PER_MINUTE", 10, 1)
        state_ttl = int_setting("OAUTH_STATE_TTL_SECONDS", 600, 30)
        margin = int_setting("TOKEN_REFRESH_MARGIN_SECONDS", 300, 0)

        settings = cls(
            database_url=database_url or "",
            token_encryption_keys=keys,
            xero_client_id=client_id or "",
            xero_client_secret=client_secret or "",
            xero_redirect_uri=redirect_uri,
            xero_scopes=scopes,
            **urls,
            auth_jwt_secret=jwt_secret,
            auth_jwks_url=jwks_url,
            auth_jwt_audience=audience,
            app_return_url=return_url or "",
            app_origin=origin,
            xero_webhook_key=webhook_key,
            demo_mode=demo,
            state_ttl_seconds=state_ttl,
            state_cookie_required=cookie_raw != "optional",
            anonymous_audit_per_minute=anonymous_audit,
            app_database_url=app_database_url,
            refresh_margin_seconds=margin,
        )
        problems.extend(settings.rule_problems(for_service=for_service))
        if problems:
            raise SettingsError("Invalid OAuth service configuration:\n  - " + "\n  - ".join(problems))
        if demo:
            settings.warn_demo()
        return settings

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def xero_urls(self) -> dict[str, str]:
        """The five Xero URLs by variable name (XERO_URL_DEFAULTS)."""
        return {name: getattr(self, name.lower()) for name in XERO_URL_DEFAULTS}

    @property
    def xero_is_loopback(self) -> bool:
        """True when every Xero URL points at this machine (the sandbox): plain http is then allowed."""
        return all(is_loopback_url(u) for u in self.xero_urls.values())

    def rule_problems(self, *, for_service: bool) -> list[str]:
        """What is wrong across settings (each value's own format is checked by `from_env`). Only the
        HTTP service has such rules; the pipeline's vault (`for_service=False`) has none."""
        if not for_service:
            return []
        problems: list[str] = []
        if not (self.auth_jwt_secret or self.auth_jwks_url):
            problems.append(AUTH_REQUIRED)
        if self.demo_mode and not self.xero_is_loopback:
            # Demo mode's public defaults (JWT secret, client credentials) must never meet real Xero.
            names = [n for n, u in self.xero_urls.items() if not is_loopback_url(u)]
            problems.append(
                "DEMO_MODE=1 serves only against the local sandbox: every XERO_*_URL must be loopback; "
                f"{', '.join(names)} point elsewhere (unset DEMO_MODE to use real Xero)"
            )
        if not self.demo_mode and not self.app_database_url:
            problems.append(APP_LOGIN_REQUIRED)
        if not self.demo_mode and not self.state_cookie_required:
            problems.append(
                "OAUTH_STATE_COOKIE=optional is only allowed with DEMO_MODE=1: outside the demo the "
                "callback must come from the browser that called initiate (call initiate with credentials "
                "so that its HttpOnly cookie is set)"
            )
        return problems

    def check_service_configured(self) -> None:
        """Refuse to serve HTTP with these settings (e.g. built by hand) when `from_env` would refuse them."""
        problems = self.rule_problems(for_service=True)
        if not self.token_encryption_keys:
            problems.append("TOKEN_ENCRYPTION_KEY is required")
        for name, url in self.xero_urls.items():
            problem = _url_problem(url, allow_loopback_http=True)
            if problem:
                problems.append(f"{name} {problem}")
        if problems:
            raise SettingsError("Invalid OAuth service configuration:\n  - " + "\n  - ".join(problems))

    def warn_demo(self) -> None:
        global _DEMO_WARNED
        if _DEMO_WARNED:
            log.warning("DEMO_MODE=1: demo mode (see the warning above); never use it with real Xero tenants")
            return
        _DEMO_WARNED = True
        banner = "!" * 78
        log.warning(
            "\n%s\n  DEMO_MODE=1: the OAuth service runs in DEMO MODE.\n"
            "  Sandbox client credentials and demo defaults are in use%s.\n"
            "  Never use demo mode with real Xero organisations.\n%s",
            banner,
            " (including the PUBLIC demo JWT secret)" if self.auth_jwt_secret == DEMO_JWT_SECRET else "",
            banner,
        )


def _database_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"must be a postgresql:// URL, got scheme {parts.scheme!r}"
    if not parts.hostname and "host=" not in parts.query:
        return "must name a host (postgresql://user@host:port/database)"
    if not parts.path.strip("/"):
        return "must name a database (…/database at the end)"
    return None


def _url_problem(url: str, *, allow_loopback_http: bool) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"must be an absolute http(s) URL, got {url!r}"
    if parts.scheme == "http" and not (allow_loopback_http and is_loopback_url(url)):
        return f"must use https (plain http only for localhost/loopback), got {url!r}"
    return None
