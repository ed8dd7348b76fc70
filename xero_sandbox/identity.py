"""Xero identity: authorize (auto-consent), token (code + refresh with rotation), revocation, connections.

State lives in memory, times come from the sandbox clock. Behaviour follows Xero's documentation:
access tokens live 30 minutes; each refresh returns a new refresh token that replaces the old one; the old
one may be replayed for a 30-minute grace only while its successor has not been used (a lost response);
refresh tokens expire after 60 days unused; revoking a refresh token removes that authorisation's
connections.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt

from .clock import SandboxClock
from .config import ALL_SCOPES, BROAD_SCOPES, LOOPBACK_HOSTS, SandboxConfig, UserConfig
from .data import deterministic_uuid

# Which scopes open which accounting endpoint (the broad legacy scope or a granular one, write implies read).
ENDPOINT_SCOPES = {
    "Invoices": ("accounting.transactions", "accounting.invoices"),
    "CreditNotes": ("accounting.transactions", "accounting.invoices"),
    "Payments": ("accounting.transactions", "accounting.payments"),
    "Contacts": ("accounting.contacts",),
    "Accounts": ("accounting.settings",),
    "Organisation": ("accounting.settings",),
    "History": ("accounting.transactions", "accounting.invoices"),
}


KEY_ID = "xero-sandbox-1"
_KEY: Any = None
_KEY_LOCK = threading.Lock()


def signing_key() -> Any:
    """One RSA key per process (generating one per server would slow every test down)."""
    global _KEY
    with _KEY_LOCK:
        if _KEY is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            _KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEY


def jwks() -> dict:
    """The public key as a JWK set, for clients that verify id_tokens (RS256, like Xero)."""
    from jwt.algorithms import RSAAlgorithm

    jwk = json.loads(RSAAlgorithm.to_jwk(signing_key().public_key()))
    jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


class OAuthError(Exception):
    def __init__(self, error: str, status: int = 400, description: str | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.description = error, status, description

    def body(self) -> dict:
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out


class ApiAuthError(Exception):
    """401/403 on the accounting API, rendered as Xero's problem JSON."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Connection:
    id: str
    tenant_id: str
    tenant_name: str
    user_id: str
    client_id: str
    auth_event_id: str
    created_ms: int
    updated_ms: int


@dataclass
class Grant:
    auth_event_id: str
    client_id: str
    user_id: str
    scopes: list[str]
    tenants: list[str]
    revoked: bool = False


@dataclass
class AuthCode:
    code: str
    grant: Grant
    redirect_uri: str
    challenge: str | None  # S256 of the code verifier
    expires_ms: int
    used: bool = False


@dataclass
class RefreshToken:
    token: str
    grant: Grant
    expires_ms: int
    rotated_ms: int | None = None
    successor: RefreshToken | None = None
    used: bool = False  # has been exchanged at least once
    revoked: bool = False


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_ms: int


@dataclass
class ConsentSettings:
    """What the next auto-consent does (admin-settable; per-request query parameters override it)."""

    user_id: str | None = None
    tenants: list[str] | None = None
    error: str | None = None  # e.g. "access_denied"


@dataclass
class IdentityStore:
    cfg: SandboxConfig
    clock: SandboxClock
    tenants: dict[str, str]  # tenant_id -> name
    lock: threading.RLock = field(default_factory=threading.RLock)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    refresh: dict[str, RefreshToken] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)
    consent: ConsentSettings = field(default_factory=ConsentSettings)
    issuer: str = "http://127.0.0.1"

    # -- users and clients -----------------------------------------------------------------------------

    def users(self) -> list[UserConfig]:
        return self.cfg.users

    def find_user(self, key: str | None) -> UserConfig:
        if not key:
            return self.cfg.users[0]
        for u in self.cfg.users:
            if key in (u.user_id, u.email):
                return u
        raise OAuthError("invalid_request", description=f"unknown sandbox user {key!r}")

    def check_client(
        self, client_id: str | None, client_secret: str | None, *, public_ok: bool = False
    ) -> str:
        """Client authentication at the token and revocation endpoints.

        Confidential clients (Xero's web apps, the default) must always present their secret; ``public_ok``
        lets a secret-less call through only when the sandbox is configured for public PKCE clients.
        """
        clients = self.cfg.clients()
        if not client_id or client_id not in clients:
            raise OAuthError("invalid_client", 400)
        if not client_secret and public_ok and self.cfg.allow_pkce_without_secret:
            return client_id
        if not client_secret or not hmac.compare_digest(client_secret, clients[client_id]):
            raise OAuthError("invalid_client", 400)
        return client_id

    def scopes_supported(self) -> tuple[str, ...]:
        """Scopes this app may ask for: no broad transaction scopes for an app created since March 2026."""
        if self.cfg.broad_scopes:
            return ALL_SCOPES
        return tuple(s for s in ALL_SCOPES if s not in BROAD_SCOPES)

    def redirect_allowed(self, uri: str) -> bool:
        if self.cfg.redirect_uris is not None:
            return uri in self.cfg.redirect_uris
        try:
            parts = urlsplit(uri)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and (parts.hostname or "") in LOOPBACK_HOSTS

    # -- authorize -------------------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[int, str | None, dict]:
        """Returns (status, redirect location or None, error body when not redirecting)."""
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id not in self.cfg.clients():
            return (
                400,
                None,
                {"error": "unauthorized_client", "error_description": "Unknown client or client not enabled"},
            )
        if not redirect_uri or not self.redirect_allowed(redirect_uri):
            return 400, None, {"error": "invalid_request", "error_description": "Invalid redirect_uri"}
        state = params.get("state")

        def back(query: dict) -> tuple[int, str, dict]:
            if state is not None:
                query["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return 302, redirect_uri + sep + urlencode(query), {}

        if params.get("response_type") != "code":
            return back({"error": "unsupported_response_type"})
        scopes = params.get("scope", "").split()
        if not scopes or any(s not in self.scopes_supported() for s in scopes):
            return back({"error": "invalid_scope"})
        method = params.get("code_challenge_method")
        challenge = params.get("code_challenge")
        if challenge and method != "S256":  # Xero supports S256 only: no "plain" (RFC 7636's default)
            return back({"error": "invalid_request", "error_description": "code_challenge_method: S256 only"})
        with self.lock:
            error = params.get("sandbox_error") or ("access_denied" if params.get("sandbox_deny") else None)
            error = error or self.consent.error
            if error:
                return back({"error": error})
            try:
                user = self.find_user(params.get("sandbox_user") or self.consent.user_id)
            except OAuthError:
                return back({"error": "access_denied", "error_description": "unknown sandbox user"})
            if params.get("sandbox_tenants"):
                tenants = [t for t in params["sandbox_tenants"].split(",") if t]
            elif self.consent.tenants is not None:
                tenants = list(self.consent.tenants)
            else:
                tenants = list(self.tenants)
            if any(t not in self.tenants for t in tenants):
                return back({"error": "access_denied", "error_description": "unknown tenant"})
            now = self.clock.now_ms()
            grant = Grant(str(uuid.uuid4()), client_id, user.user_id, scopes, tenants)
            for tid in tenants:
                self._connect(grant, tid, now)
            code = secrets.token_urlsafe(32)
            self.codes[code] = AuthCode(
                code,
                grant,
                redirect_uri,
                challenge,
                now + self.cfg.auth_code_lifetime * 1000,
            )
        return back({"code": code, "scope": " ".join(scopes)})

    def _connect(self, grant: Grant, tenant_id: str, now: int) -> None:
        for c in self.connections.values():
            if (c.user_id, c.client_id, c.tenant_id) == (grant.user_id, grant.client_id, tenant_id):
                c.auth_event_id, c.updated_ms = grant.auth_event_id, now
                return
        cid = deterministic_uuid("conn", grant.client_id, grant.user_id, tenant_id, secrets.token_hex(4))
        self.connections[cid] = Connection(
            cid,
            tenant_id,
            self.tenants[tenant_id],
            grant.user_id,
            grant.client_id,
            grant.auth_event_id,
            now,
            now,
        )

    # -- token -----------------------------------------------------------------------------------------

    def token(self, form: dict[str, str], basic: tuple[str, str] | None) -> dict:
        client_id = basic[0] if basic else form.get("client_id")
        secret = basic[1] if basic else form.get("client_secret")
        grant_type = form.get("grant_type")
        with self.lock:
            if grant_type == "authorization_code":
                return self._code_exchange(form, client_id, secret)
            if grant_type == "refresh_token":
                return self._refresh(form, client_id, secret)
            if grant_type == "client_credentials":
                raise OAuthError("unauthorized_client")
            raise OAuthError("unsupported_grant_type")

    def _code_exchange(self, form: dict[str, str], client_id: str | None, secret: str | None) -> dict:
        verifier = form.get("code_verifier")
        client = self.check_client(client_id, secret, public_ok=bool(verifier))
        code = self.codes.get(form.get("code", ""))
        now = self.clock.now_ms()
        if code is None or code.grant.client_id != client:
            raise OAuthError("invalid_grant")
        if code.used:
            # Replay of a code: Xero-style, the tokens issued from it are revoked too.
            self._revoke_grant(code.grant)
            raise OAuthError("invalid_grant")
        if now > code.expires_ms or form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant")
        if code.challenge:
            if not verifier:
                raise OAuthError("invalid_grant", description="code_verifier required")
            calc = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not hmac.compare_digest(calc, code.challenge):
                raise OAuthError("invalid_grant", description="code_verifier mismatch")
        elif not secret:
            raise OAuthError("invalid_client")
        code.used = True
        return self._issue(code.grant, now, new_refresh=True)

    def _refresh(self, form: dict[str, str], client_id: str | None, secret: str | None) -> dict:
        client = self.check_client(client_id, secret, public_ok=True)
        rt = self.refresh.get(form.get("refresh_token", ""))
        now = self.clock.now_ms()
        if rt is None or rt.revoked or rt.grant.revoked or rt.grant.client_id != client:
            raise OAuthError("invalid_grant")
        if "scope" in form and any(s not in rt.grant.scopes for s in form["scope"].split()):
            raise OAuthError("invalid_scope")
        if rt.successor is not None:
            # Already rotated: a replay is honoured only within the grace and while the successor is unused.
            grace_ok = now - (rt.rotated_ms or 0) <= self.cfg.refresh_grace * 1000
            if not grace_ok or rt.successor.used or rt.successor.revoked:
                raise OAuthError("invalid_grant")
            return self._issue(rt.grant, now, refresh=rt.successor)
        if now > rt.expires_ms:
            raise OAuthError("invalid_grant")
        rt.used = True
        out = self._issue(rt.grant, now, new_refresh=True)
        rt.successor = self.refresh[out["refresh_token"]]
        rt.rotated_ms = now
        return out

    def _issue(
        self, grant: Grant, now: int, *, new_refresh: bool = False, refresh: RefreshToken | None = None
    ) -> dict:
        exp = now + self.cfg.access_token_lifetime * 1000
        claims = {
            "nbf": now // 1000,
            "exp": exp // 1000,
            "iss": self.issuer,
            "aud": f"{self.issuer}/resources",
            "client_id": grant.client_id,
            "sub": grant.user_id,
            "auth_time": now // 1000,
            "xero_userid": grant.user_id,
            "global_session_id": grant.auth_event_id,
            "jti": secrets.token_hex(16),
            "authentication_event_id": grant.auth_event_id,
            "scope": grant.scopes,
        }
        access = jwt.encode(claims, signing_key(), algorithm="RS256", headers={"kid": KEY_ID})
        self.access[access] = AccessToken(access, grant, exp)
        out: dict = {
            "access_token": access,
            "expires_in": self.cfg.access_token_lifetime,
            "token_type": "Bearer",
            "scope": " ".join(grant.scopes),
        }
        if "offline_access" in grant.scopes:
            if new_refresh:
                refresh = RefreshToken(
                    secrets.token_urlsafe(32), grant, now + self.cfg.refresh_token_lifetime * 1000
                )
                self.refresh[refresh.token] = refresh
            if refresh is not None:
                out["refresh_token"] = refresh.token
        if "openid" in grant.scopes:
            user = self.find_user(grant.user_id)
            out["id_token"] = jwt.encode(
                {
                    "nbf": now // 1000,
                    "exp": (now + 300_000) // 1000,
                    "iat": now // 1000,
                    "iss": self.issuer,
                    "aud": grant.client_id,
                    "sub": user.user_id,
                    "auth_time": now // 1000,
                    "xero_userid": user.user_id,
                    "global_session_id": grant.auth_event_id,
                    "preferred_username": user.email,
                    "email": user.email,
                    "given_name": user.given_name,
                    "family_name": user.family_name,
                },
                signing_key(),
                algorithm="RS256",
                headers={"kid": KEY_ID},
            )
        return out

    # -- revocation ------------------------------------------------------------------------------------

    def revoke(self, form: dict[str, str], basic: tuple[str, str] | None) -> None:
        client_id = basic[0] if basic else form.get("client_id")
        secret = basic[1] if basic else form.get("client_secret")
        with self.lock:
            self.check_client(client_id, secret, public_ok=True)
            token = form.get("token", "")
            rt = self.refresh.get(token)
            if rt is not None and rt.grant.client_id == client_id:
                self._revoke_grant(rt.grant)
            at = self.access.get(token)
            if at is not None and at.grant.client_id == client_id:
                self._revoke_grant(at.grant)
            # Unknown tokens: 200 as RFC 7009 says.

    def _revoke_grant(self, grant: Grant) -> None:
        grant.revoked = True
        for rt in self.refresh.values():
            if rt.grant is grant:
                rt.revoked = True
        for cid in [c.id for c in self.connections.values() if c.auth_event_id == grant.auth_event_id]:
            del self.connections[cid]

    # -- API access ------------------------------------------------------------------------------------

    def bearer(self, header: str | None) -> AccessToken:
        if not header or not header.lower().startswith("bearer "):
            raise ApiAuthError(401, "AuthenticationUnsuccessful")
        token = header[7:].strip()
        with self.lock:
            at = self.access.get(token)
            if at is None or at.grant.revoked:
                raise ApiAuthError(401, "AuthenticationUnsuccessful")
            if self.clock.now_ms() >= at.expires_ms:
                from .serialise import iso_seconds

                raise ApiAuthError(401, f"TokenExpired: token expired at {iso_seconds(at.expires_ms)}")
            return at

    def check_tenant(self, at: AccessToken, tenant_id: str | None, endpoint: str) -> None:
        if not tenant_id:
            raise ApiAuthError(403, "AuthenticationUnsuccessful")
        with self.lock:
            ok = any(
                c.tenant_id == tenant_id
                and c.user_id == at.grant.user_id
                and c.client_id == at.grant.client_id
                for c in self.connections.values()
            )
        if not ok:
            raise ApiAuthError(403, "AuthenticationUnsuccessful")
        wanted = ENDPOINT_SCOPES.get(endpoint, ())
        if wanted and not any(s in at.grant.scopes or f"{s}.read" in at.grant.scopes for s in wanted):
            raise ApiAuthError(401, "AuthorizationUnsuccessful")

    def list_connections(self, at: AccessToken, auth_event_id: str | None = None) -> list[Connection]:
        with self.lock:
            return [
                c
                for c in self.connections.values()
                if c.user_id == at.grant.user_id
                and c.client_id == at.grant.client_id
                and (auth_event_id is None or c.auth_event_id == auth_event_id)
            ]

    def delete_connection(self, at: AccessToken, connection_id: str) -> bool:
        with self.lock:
            c = self.connections.get(connection_id)
            if c is None or c.user_id != at.grant.user_id or c.client_id != at.grant.client_id:
                return False
            del self.connections[connection_id]
            return True

    def drop_tenant_connections(self, tenant_id: str) -> int:
        """Admin: the organisation disconnected the app from Xero's side."""
        with self.lock:
            ids = [c.id for c in self.connections.values() if c.tenant_id == tenant_id]
            for cid in ids:
                del self.connections[cid]
            return len(ids)

    def revoke_authorisations(self, user_id: str | None = None) -> int:
        """Admin: the user (or every user) removes the app's access from Xero's side: each authorisation is
        revoked, so its refresh and access tokens stop working and its connections go."""
        with self.lock:
            grants = {id(x.grant): x.grant for x in (*self.refresh.values(), *self.access.values())}
            hit = [g for g in grants.values() if not g.revoked and user_id in (None, g.user_id)]
            for grant in hit:
                self._revoke_grant(grant)
            return len(hit)

    def expire_access_tokens(self) -> int:
        with self.lock:
            now = self.clock.now_ms()
            for at in self.access.values():
                at.expires_ms = min(at.expires_ms, now)
            return len(self.access)

    def userinfo(self, at: AccessToken) -> dict:
        user = self.find_user(at.grant.user_id)
        return {
            "sub": user.user_id,
            "xero_userid": user.user_id,
            "email": user.email,
            "preferred_username": user.email,
            "given_name": user.given_name,
            "family_name": user.family_name,
        }

    def discovery(self, base: str) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/identity/connect/authorize",
            "token_endpoint": f"{base}/connect/token",
            "revocation_endpoint": f"{base}/connect/revocation",
            "userinfo_endpoint": f"{base}/connect/userinfo",
            "jwks_uri": f"{base}/.well-known/openid-configuration/jwks",
            "scopes_supported": list(self.scopes_supported()),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]
            + (["none"] if self.cfg.allow_pkce_without_secret else []),
        }

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "connections": [connection_json(c) for c in self.connections.values()],
                "refresh_tokens": sum(
                    1 for r in self.refresh.values() if not r.revoked and r.successor is None
                ),
                "access_tokens": len(self.access),
                "consent": {
                    "user_id": self.consent.user_id,
                    "tenants": self.consent.tenants,
                    "error": self.consent.error,
                },
            }


def connection_json(c: Connection) -> dict:
    from .serialise import iso_seconds

    def iso(ms: int) -> str:
        return iso_seconds(ms) + f".{ms % 1000:03d}0000"

    return {
        "id": c.id,
        "authEventId": c.auth_event_id,
        "tenantId": c.tenant_id,
        "tenantType": "ORGANISATION",
        "tenantName": c.tenant_name,
        "createdDateUtc": iso(c.created_ms),
        "updatedDateUtc": iso(c.updated_ms),
    }
