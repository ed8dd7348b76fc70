"""Calls to Xero's identity service and connections endpoint, through requests-oauthlib.

Plain http is allowed (OAUTHLIB_INSECURE_TRANSPORT) only when every Xero URL is loopback, i.e.
the local sandbox; never for real Xero.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from oauthlib.oauth2 import OAuth2Error
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from oauth_service.settings import Settings

log = logging.getLogger("oauth_service.xero")
_insecure_lock = threading.Lock()


class _NoDebugRecords(logging.Filter):
    """requests-oauthlib logs request bodies and tokens at DEBUG: such records are dropped, whatever
    level the application configures, so that no token ever reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO


for _name in ("requests_oauthlib.oauth2_session", "requests_oauthlib.oauth1_session", "requests_oauthlib"):
    logging.getLogger(_name).addFilter(_NoDebugRecords())


class XeroError(Exception):
    """Xero answered with an error, or could not be reached.

    `error` is Xero's OAuth error code (e.g. `invalid_grant`) when there is one; `status` the HTTP
    status when there is one; `transient` whether trying again later may help.
    """

    def __init__(
        self, message: str, *, error: str | None = None, status: int | None = None, transient: bool = False
    ):
        super().__init__(message)
        self.error = error
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str
    expires_at: float  # epoch seconds
    scope: str | None = None
    id_token: str | None = None

    def __repr__(self) -> str:  # never print tokens
        return f"TokenSet(expires_at={self.expires_at!r}, scope={self.scope!r})"


# What Xero sends is fitted to our columns before it is stored: descriptive text is cut to length, an
# identifier that does not fit is dropped (a cut identifier would name something else).
def clipped_text(value: Any, limit: int) -> str | None:
    """A non-empty string cut to `limit` characters (NULs removed: PostgreSQL refuses them); else None."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "")[:limit] or None


def fitting_id(value: Any, limit: int) -> str | None:
    """A non-empty string of at most `limit` characters without NULs; else None."""
    if isinstance(value, str) and value and len(value) <= limit and "\x00" not in value:
        return value
    return None


def new_pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)[:128]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=")
    return verifier, challenge.decode("ascii")


def _allow_loopback_http(settings: Settings) -> None:
    if settings.xero_is_loopback and os.environ.get("OAUTHLIB_INSECURE_TRANSPORT") != "1":
        with _insecure_lock:
            log.info("every Xero URL is loopback (sandbox): allowing plain http for OAuth")
            os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"


def _token_set(token: dict[str, Any]) -> TokenSet:
    if not token.get("access_token") or not token.get("refresh_token"):
        raise XeroError(
            "Xero's token answer lacks an access or refresh token (is offline_access granted?)",
            error="invalid_token_response",
        )
    expires_at = token.get("expires_at")
    if expires_at is None:
        expires_at = time.time() + float(token.get("expires_in") or 1800)
    scope = token.get("scope")
    if isinstance(scope, list | tuple):
        scope = " ".join(scope)
    return TokenSet(
        access_token=token["access_token"],
        refresh_token=token["refresh_token"],
        expires_at=float(expires_at),
        scope=scope,
        id_token=token.get("id_token"),
    )


def _oauth_error(exc: Exception, what: str) -> XeroError:
    if isinstance(exc, OAuth2Error):
        code = getattr(exc, "error", None) or "oauth_error"
        status = getattr(exc, "status_code", None)
        return XeroError(
            f"{what}: Xero answered {code}",
            error=code,
            status=status,
            transient=bool(status and status >= 500),
        )
    if isinstance(exc, requests.RequestException):
        return XeroError(f"{what}: Xero could not be reached ({type(exc).__name__})", transient=True)
    if isinstance(exc, ValueError):
        # oauthlib raises ValueError/MissingTokenError on non-JSON or non-OAuth answers (e.g. a 5xx page)
        return XeroError(f"{what}: unexpected answer from Xero ({type(exc).__name__})", transient=True)
    return XeroError(f"{what}: {type(exc).__name__}", transient=True)


class XeroClient:
    def __init__(self, settings: Settings, session: requests.Session | None = None):
        self.settings = settings
        self.timeout = settings.http_timeout_seconds
        self.http = session or requests.Session()
        _allow_loopback_http(settings)

    # -------------------------------------------------------------- authorization
    def authorization_url(self, state: str, code_challenge: str, redirect_uri: str | None = None) -> str:
        oauth = OAuth2Session(
            self.settings.xero_client_id,
            redirect_uri=redirect_uri or self.settings.xero_redirect_uri,
            scope=list(self.settings.xero_scopes),
        )
        url, _ = oauth.authorization_url(
            self.settings.xero_authorize_url,
            state=state,
            code_challenge=code_challenge,
            code_challenge_method="S256",
        )
        return url

    def exchange_code(self, code: str, code_verifier: str, redirect_uri: str | None = None) -> TokenSet:
        oauth = OAuth2Session(
            self.settings.xero_client_id, redirect_uri=redirect_uri or self.settings.xero_redirect_uri
        )
        try:
            token = oauth.fetch_token(
                self.settings.xero_token_url,
                code=code,
                code_verifier=code_verifier,
                auth=HTTPBasicAuth(self.settings.xero_client_id, self.settings.xero_client_secret),
                include_client_id=False,
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - classified below
            raise _oauth_error(exc, "code exchange failed") from None
        return _token_set(token)

    def refresh(self, refresh_token: str) -> TokenSet:
        oauth = OAuth2Session(self.settings.xero_client_id)
        try:
            token = oauth.refresh_token(
                self.settings.xero_token_url,
                refresh_token=refresh_token,
                auth=HTTPBasicAuth(self.settings.xero_client_id, self.settings.xero_client_secret),
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001
            raise _oauth_error(exc, "token refresh failed") from None
        return _token_set(token)

    def revoke(self, refresh_token: str) -> None:
        try:
            resp = self.http.post(
                self.settings.xero_revocation_url,
                data={"token": refresh_token, "token_type_hint": "refresh_token"},
                auth=(self.settings.xero_client_id, self.settings.xero_client_secret),
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise XeroError(
                f"token revocation failed: Xero could not be reached ({type(exc).__name__})", transient=True
            ) from None
        if resp.status_code >= 500:
            raise XeroError(
                f"token revocation failed: HTTP {resp.status_code}", status=resp.status_code, transient=True
            )
        if resp.status_code >= 400:
            error = _json_error(resp)
            # An already dead token is as good as revoked.
            if error not in ("invalid_grant", "invalid_token"):
                raise XeroError(
                    f"token revocation failed: HTTP {resp.status_code} {error or ''}".strip(),
                    status=resp.status_code,
                    error=error,
                )

    # -------------------------------------------------------------- connections
    def connections(self, access_token: str) -> list[dict[str, Any]]:
        try:
            resp = self.http.get(
                self.settings.xero_connections_url,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise XeroError(
                f"GET /connections failed: Xero could not be reached ({type(exc).__name__})", transient=True
            ) from None
        if resp.status_code != 200:
            raise XeroError(
                f"GET /connections failed: HTTP {resp.status_code}",
                status=resp.status_code,
                transient=resp.status_code >= 500 or resp.status_code == 429,
            )
        try:
            data = resp.json()
        except ValueError:
            raise XeroError("GET /connections answered no JSON", transient=True) from None
        if not isinstance(data, list):
            raise XeroError("GET /connections answered something other than a list")
        return [c for c in data if isinstance(c, dict)]

    def delete_connection(self, access_token: str, connection_id: str) -> int:
        """DELETE /connections/{id}; returns the HTTP status (204, or 404 when already gone)."""
        try:
            resp = self.http.delete(
                f"{self.settings.xero_connections_url}/{connection_id}",
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise XeroError(
                f"DELETE /connections failed: Xero could not be reached ({type(exc).__name__})",
                transient=True,
            ) from None
        if resp.status_code in (200, 204, 404):
            return resp.status_code
        raise XeroError(
            f"DELETE /connections failed: HTTP {resp.status_code}",
            status=resp.status_code,
            transient=resp.status_code >= 500 or resp.status_code == 429,
        )


def _json_error(resp: requests.Response) -> str | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    if isinstance(data, dict):
        err = data.get("error")
        return str(err) if err else None
    return None


def unverified_claims(token: str) -> dict[str, Any]:
    """Claims of a JWT access token without verifying it (only to read `authentication_event_id`)."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}
