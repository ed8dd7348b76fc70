"""The OAuth service's HTTP API (FastAPI): connect, list and disconnect Xero tenants; webhooks; health.

POST   /xero/auth/initiate            bearer JWT → {"authorizationUrl", "state"}
GET    /xero/auth/callback            Xero's redirect → 302 to APP_RETURN_URL?connected=n | ?error=code
GET    /xero/connections              bearer JWT → the caller's tenants (never tokens)
DELETE /xero/connections/{tenant_id}  bearer JWT → revoke at Xero, drop tokens, mark disconnected
POST   /xero/webhooks                 Xero webhooks (x-xero-signature) → 200 empty / 401
GET    /healthz                       liveness and database reachability
GET    /docs, /openapi.json           OpenAPI documentation

Browser binding of the OAuth `state`: initiate sets an HttpOnly cookie and the callback is accepted
only from the browser that carries it. Over https (the request's scheme, e.g. X-Forwarded-Proto from a
trusted proxy, or an https XERO_REDIRECT_URI) it is `__Host-xero_oauth_browser`, Secure and
SameSite=None: the web app's fetch to initiate is cross-site, and browsers drop Lax cookies set by
cross-site fetches. Over plain http (loopback: the demo, tests) it is `xero_oauth_browser`, SameSite=Lax.
The web app must therefore call initiate *with credentials* (`fetch(url, {method: "POST", credentials:
"include", headers: {Authorization: "Bearer …"}})`, CORS allows credentials for APP_ORIGIN only),
and then send that same browser to `authorizationUrl`. OAUTH_STATE_COOKIE=optional (state checked
without the cookie) exists for the local demo only and is refused unless DEMO_MODE=1.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import Engine, text

from oauth_service.audit import AnonymousAuditLimiter, clean_ip, record_audit
from oauth_service.auth import AuthError, Caller, JwtVerifier
from oauth_service.db import app_engine
from oauth_service.kpis import KpiQuery, KpiQueryError, read_kpis
from oauth_service.settings import Settings
from oauth_service.vault import (
    CONNECTIONS,
    ClientConfigurationError,
    TenantNotConnected,
    TokenVault,
    VaultError,
)
from oauth_service.xero import (
    TokenSet,
    XeroError,
    clipped_text,
    fitting_id,
    new_pkce_pair,
    unverified_claims,
)

log = logging.getLogger("oauth_service.app")
access_log = logging.getLogger("oauth_service.access")

BINDING_COOKIE = "xero_oauth_browser"
# The __Host- prefix makes browsers insist on Secure, Path=/ and no Domain.
SECURE_BINDING_COOKIE = "__Host-" + BINDING_COOKIE
CALLBACK_PATH = "/xero/auth/callback"
# Xero's deliveries are small; anything bigger is refused before the HMAC is computed over it.
WEBHOOK_MAX_BYTES = 1024 * 1024
_ERROR_CODE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _client_ip(request: Request) -> str | None:
    """The caller's IP address, or None when the peer (or a proxy's X-Forwarded-For) names no IP."""
    return clean_ip(request.client.host) if request.client else None


def _with_query(url: str, **params: Any) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend((k, str(v)) for k, v in params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _safe_error_code(value: str | None) -> str:
    code = (value or "").strip().lower()
    if not code or len(code) > 64 or not set(code) <= _ERROR_CODE_CHARS:
        return "xero_error"
    return code


# ---------------------------------------------------------------------- response models
class InitiateResponse(BaseModel):
    authorizationUrl: str = Field(description="Send the browser here to authorise at Xero")
    state: str = Field(description="Single-use, expiring state bound to the caller")
    expiresAt: datetime


class ConnectionOut(BaseModel):
    tenantId: str
    tenantName: str | None
    tenantType: str | None
    status: str = Field(description="active, reauth_required or disconnected")
    statusReason: str | None
    connectedAt: datetime | None
    lastSync: datetime | None
    scopes: list[str]


class ConnectionsResponse(BaseModel):
    connections: list[ConnectionOut]


class DisconnectResponse(BaseModel):
    tenantId: str
    status: str
    xeroConnectionDeleted: bool
    revokedAtXero: bool


class KpiPoint(BaseModel):
    period: str = Field(description="The month, YYYY-MM")
    value: str | None = Field(description="Exact decimal as a string; null where the KPI is undefined")


class KpiSeries(BaseModel):
    kpi: str
    unit: str = Field(description="currency, days, count or ratio")
    currency: str | None = Field(description="The organisation's base currency, for currency KPIs")
    values: list[KpiPoint]


class KpisResponse(BaseModel):
    tenantId: str
    tenantName: str | None
    lastSync: datetime | None
    from_: str = Field(alias="from")
    to: str
    kpis: list[KpiSeries]


class Health(BaseModel):
    status: str
    database: str
    demoMode: bool


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The service's ASGI app. Refuses to build with settings `from_env` would refuse (no caller
    authentication, no dedicated database login outside DEMO_MODE, demo mode against real Xero...)."""
    settings.check_service_configured()
    if settings.demo_mode:
        settings.warn_demo()
    own_engine = engine is None
    engine = engine or app_engine(settings)
    vault = TokenVault(settings, engine, actor="oauth_service", cache=False)
    anonymous_audit = AnonymousAuditLimiter(engine, settings.anonymous_audit_per_minute)
    xero = vault.xero
    verifier = JwtVerifier(settings)
    cookie_required = not settings.demo_mode and settings.state_cookie_required
    public_https = bool(settings.xero_redirect_uri and settings.xero_redirect_uri.startswith("https://"))

    def binding_cookie(request: Request) -> tuple[str, dict[str, Any]]:
        """Name and attributes of the browser-binding cookie, the same for initiate and callback."""
        if public_https or request.url.scheme == "https":
            return SECURE_BINDING_COOKIE, {"secure": True, "samesite": "none"}
        return BINDING_COOKIE, {"secure": False, "samesite": "lax"}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info(
            "OAuth service up (demo_mode=%s, xero=%s)",
            settings.demo_mode,
            urlsplit(settings.xero_token_url).netloc,
        )
        yield
        await run_in_threadpool(anonymous_audit.flush)
        if own_engine:
            engine.dispose()

    app = FastAPI(
        title="Xero connections service",
        version="1.0.0",
        description="Connects the web app's users to their Xero organisations; keeps their tokens encrypted.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.vault = vault
    app.state.anonymous_audit = anonymous_audit

    if settings.app_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[settings.app_origin],
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    @app.middleware("http")
    async def log_and_harden(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        # The path only: query strings (OAuth codes and states) are never logged.
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    @app.exception_handler(AuthError)
    async def auth_error(_request: Request, exc: AuthError):
        return JSONResponse(
            {"detail": exc.reason},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    bearer = HTTPBearer(auto_error=False, description="The web app's (Supabase) JWT")

    def current_caller(
        request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Caller:
        try:
            return verifier.verify(request.headers.get("authorization"))
        except AuthError as exc:
            log.info("rejected bearer token from %s: %s", _client_ip(request), exc.reason)
            anonymous_audit.record(
                "auth_rejected",
                ip_address=_client_ip(request),
                metadata={"reason": exc.reason, "method": request.method, "path": request.url.path},
            )
            raise

    CallerDep = Annotated[Caller, Depends(current_caller)]

    def redirect_uri_for(request: Request) -> str:
        return settings.xero_redirect_uri or str(request.url_for("xero_auth_callback"))

    # ------------------------------------------------------------------ initiate
    @app.post("/xero/auth/initiate", response_model=InitiateResponse, tags=["connect"])
    def initiate(request: Request, response: Response, caller: CallerDep) -> InitiateResponse:
        """Start connecting Xero organisations: a single-use, expiring `state` bound to the caller
        (and to this browser by an HttpOnly cookie), with PKCE (S256)."""
        state = secrets.token_urlsafe(32)
        code_verifier, challenge = new_pkce_pair()
        cookie_name, cookie_attributes = binding_cookie(request)
        browser = request.cookies.get(cookie_name)
        if not browser or len(browser) < 32 or len(browser) > 128:
            browser = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=settings.state_ttl_seconds)
        ip = _client_ip(request)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM app.oauth_states WHERE expires_at < now() - interval '1 day'"))
            conn.execute(
                text(
                    "INSERT INTO app.oauth_states (state_hash, user_id, code_verifier, browser_binding, "
                    "ip_address, expires_at) VALUES (:h, :u, :v, :b, CAST(:ip AS inet), :e)"
                ),
                {
                    "h": _sha256(state),
                    "u": caller.user_id,
                    "v": vault.cipher.encrypt(code_verifier),
                    "b": _sha256(browser),
                    "ip": ip,
                    "e": expires,
                },
            )
            record_audit(
                conn,
                "xero_connect_initiated",
                user_id=caller.user_id,
                ip_address=ip,
                table_accessed="app.oauth_states",
                metadata={"scopes": list(settings.xero_scopes)},
            )
        url = xero.authorization_url(state, challenge, redirect_uri_for(request))
        response.set_cookie(
            cookie_name,
            browser,
            max_age=settings.state_ttl_seconds,
            httponly=True,
            path="/",
            **cookie_attributes,
        )
        return InitiateResponse(authorizationUrl=url, state=state, expiresAt=expires)

    # ------------------------------------------------------------------ callback
    def fail(
        request: Request,
        code: str,
        *,
        user_id: str | None = None,
        outcome: str = "failure",
        detail: str | None = None,
        **metadata: Any,
    ) -> RedirectResponse:
        audit_args: dict[str, Any] = {
            "outcome": outcome,
            "table_accessed": "app.oauth_states",
            "metadata": {"error": code, **({"detail": detail} if detail else {}), **metadata},
        }
        if user_id is None:  # no valid state: anonymous, audited within a bound per source and minute
            anonymous_audit.record("xero_callback_failed", ip_address=_client_ip(request), **audit_args)
        else:
            record_audit(
                engine, "xero_callback_failed", user_id=user_id, ip_address=_client_ip(request), **audit_args
            )
        log.info("callback failed: %s%s", code, f" ({detail})" if detail else "")
        return RedirectResponse(_with_query(settings.app_return_url, error=code), status_code=302)

    def abandon(
        request: Request,
        tokens: TokenSet,
        code: str,
        *,
        user_id: str,
        tenants: list[dict[str, Any]] | None,
        detail: str | None = None,
    ):
        """A failure after the code exchange: the new tokens will never be stored. Revoking them makes
        Xero drop every connection of this authorisation; but on a reconnect Xero has moved the tenant's
        existing connection onto it, and revoking would cut off a tenant whose row stays `active`. So
        revoke only when we know none of `tenants` (this authorisation's connections; None when
        /connections failed) is a connection we use. Otherwise keep it: the unused refresh token expires
        at Xero. Either way the audit row says what was done (`revoked`, else `not_revoked`)."""
        outcome: dict[str, Any] = {"revoked": False}
        if tenants is None:
            outcome["not_revoked"] = "connections_unknown"
        else:
            try:
                in_use = vault.tenants_in_use(tenants)
            except Exception as exc:  # noqa: BLE001 - e.g. the database that just failed: we cannot tell
                log.warning("could not check the abandoned authorisation's tenants: %s", type(exc).__name__)
                outcome["not_revoked"] = "tenants_unknown"
            else:
                if in_use:
                    outcome.update(not_revoked="tenants_in_use", tenants_in_use=in_use)
                else:
                    try:
                        xero.revoke(tokens.refresh_token)
                        outcome["revoked"] = True
                    except XeroError as exc:
                        log.warning("could not revoke the abandoned authorisation at Xero: %s", exc)
                        outcome.update(not_revoked="revoke_failed", revoke_error=str(exc))
        return fail(request, code, user_id=user_id, detail=detail, **outcome)

    @app.get(
        CALLBACK_PATH,
        name="xero_auth_callback",
        tags=["connect"],
        status_code=302,
        response_class=RedirectResponse,
    )
    def callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
    ) -> RedirectResponse:
        """Xero redirects the browser here. Checks the state, exchanges the code (PKCE), reads
        `/connections`, stores one encrypted connection per tenant and redirects to the web app."""
        record = None
        if state and len(state) <= 256:
            with engine.begin() as conn:
                record = conn.execute(
                    text(
                        "UPDATE app.oauth_states SET used_at = now() "
                        "WHERE state_hash = :h AND used_at IS NULL "
                        "RETURNING user_id, code_verifier, browser_binding, expires_at"
                    ),
                    {"h": _sha256(state)},
                ).one_or_none()
                reused = (
                    record is None
                    and conn.execute(
                        text("SELECT 1 FROM app.oauth_states WHERE state_hash = :h"), {"h": _sha256(state)}
                    ).first()
                    is not None
                )
        else:
            reused = False
        user_id = str(record.user_id) if record is not None else None

        if error:
            return fail(
                request,
                _safe_error_code(error),
                user_id=user_id,
                outcome="denied",
                detail="Xero answered with an error",
            )
        if not state:
            return fail(request, "missing_state")
        if record is None:
            return fail(request, "state_reused" if reused else "invalid_state")
        if record.expires_at < datetime.now(UTC):
            return fail(request, "state_expired", user_id=user_id)
        cookie_name, cookie_attributes = binding_cookie(request)
        cookie = request.cookies.get(cookie_name)
        if cookie is not None and not hmac.compare_digest(_sha256(cookie), record.browser_binding or ""):
            return fail(
                request,
                "state_mismatch",
                user_id=user_id,
                outcome="denied",
                detail="state was issued to another browser",
            )
        if cookie is None and cookie_required:
            return fail(
                request,
                "state_mismatch",
                user_id=user_id,
                outcome="denied",
                detail="no browser binding cookie",
            )
        if not code:
            return fail(request, "missing_code", user_id=user_id)

        try:
            tokens = xero.exchange_code(
                code, vault.cipher.decrypt(record.code_verifier), redirect_uri_for(request)
            )
        except XeroError as exc:
            return fail(request, "token_exchange_failed", user_id=user_id, detail=exc.error or str(exc))
        try:
            tenants = xero.connections(tokens.access_token)
        except XeroError as exc:
            return abandon(
                request, tokens, "connections_failed", user_id=user_id, tenants=None, detail=str(exc)
            )
        event_id = unverified_claims(tokens.access_token).get("authentication_event_id")
        if event_id and any(t.get("authEventId") == event_id for t in tenants):
            tenants = [t for t in tenants if t.get("authEventId") == event_id]
        tenants = [t for t in tenants if fitting_id(t.get("tenantId"), 255)]
        if not tenants:
            return abandon(request, tokens, "no_tenants", user_id=user_id, tenants=tenants)
        try:
            with engine.begin() as conn:
                stored = vault.store_authorization(
                    conn, user_id=user_id, tokens=tokens, tenants=tenants, ip_address=_client_ip(request)
                )
        except Exception as exc:  # noqa: BLE001 - e.g. the database: the user gets a clear error, not a 500
            # The exception's text may quote statement parameters (encrypted tokens): only its type is kept.
            log.error("storing the connections of user %s failed: %s", user_id, type(exc).__name__)
            return abandon(
                request, tokens, "store_failed", user_id=user_id, tenants=tenants, detail=type(exc).__name__
            )
        log.info("user %s connected %d Xero tenant(s)", user_id, len(stored))
        response = RedirectResponse(
            _with_query(settings.app_return_url, connected=len(stored)), status_code=302
        )
        response.delete_cookie(cookie_name, path="/", httponly=True, **cookie_attributes)
        return response

    # ------------------------------------------------------------------ connections
    @app.get("/xero/connections", response_model=ConnectionsResponse, tags=["connections"])
    def list_connections(request: Request, caller: CallerDep) -> ConnectionsResponse:
        """The caller's Xero tenants and their status. Never tokens."""
        with engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, tenant_id, tenant_name, tenant_type, status, status_reason, connected_at, "
                    "last_sync, scopes FROM app.xero_connections WHERE user_id = :u "
                    "ORDER BY tenant_name NULLS LAST, tenant_id"
                ),
                {"u": caller.user_id},
            ).all()
            record_audit(
                conn,
                "connections_listed",
                user_id=caller.user_id,
                ip_address=_client_ip(request),
                table_accessed=CONNECTIONS,
                metadata={"count": len(rows)},
            )
        return ConnectionsResponse(
            connections=[
                ConnectionOut(
                    tenantId=r.tenant_id,
                    tenantName=r.tenant_name,
                    tenantType=r.tenant_type,
                    status=r.status,
                    statusReason=r.status_reason,
                    connectedAt=r.connected_at,
                    lastSync=r.last_sync,
                    scopes=(r.scopes or "").split(),
                )
                for r in rows
            ]
        )

    @app.delete(
        "/xero/connections/{tenant_id}",
        response_model=DisconnectResponse,
        tags=["connections"],
        responses={
            404: {"description": "No such tenant for this user"},
            502: {"description": "Xero could not be reached or refused; the tenant was not disconnected"},
        },
    )
    def disconnect(
        request: Request, caller: CallerDep, tenant_id: Annotated[str, Path(max_length=255)]
    ) -> DisconnectResponse:
        """Disconnect one of the caller's tenants: DELETE /connections/{id} at Xero, revoke the refresh
        token when no other tenant uses it, drop the tokens, mark the tenant `disconnected`."""
        ip = _client_ip(request)
        try:
            result = vault.disconnect(tenant_id, user_id=caller.user_id, ip_address=ip)
        except TenantNotConnected:
            raise HTTPException(status_code=404, detail="no such Xero tenant") from None
        except (XeroError, VaultError) as exc:
            configuration = isinstance(exc, ClientConfigurationError)
            record_audit(
                engine,
                "xero_disconnected",
                user_id=caller.user_id,
                tenant_id=tenant_id,
                ip_address=ip,
                outcome="failure",
                table_accessed=CONNECTIONS,
                metadata={"error": str(exc), "stage": "refresh" if isinstance(exc, VaultError) else "xero"},
            )
            log.warning("disconnect of tenant %s failed: %s", tenant_id, exc)
            detail = (
                "Xero rejected this service's client credentials; the tenant was not disconnected. "
                "An operator must check XERO_CLIENT_ID/XERO_CLIENT_SECRET."
                if configuration
                else "Xero could not be reached or refused the request; the tenant was not disconnected. "
                "Try again later."
            )
            return JSONResponse(
                {"detail": detail, "tenantId": tenant_id, "status": "unchanged"}, status_code=502
            )
        return DisconnectResponse(
            tenantId=tenant_id,
            status="disconnected",
            xeroConnectionDeleted=bool(result.get("xero_connection_deleted")),
            revokedAtXero=bool(result.get("revoked")),
        )

    @app.get(
        "/xero/tenants/{tenant_id}/kpis",
        response_model=KpisResponse,
        response_model_by_alias=True,
        tags=["kpis"],
        responses={400: {"description": "A malformed month, from after to, or an unknown KPI"},
                   401: {"description": "No bearer token, or one that is not valid"},
                   404: {"description": "No such tenant for this user"}},
    )
    def tenant_kpis(
        request: Request,
        caller: CallerDep,
        tenant_id: Annotated[str, Path(max_length=255)],
        from_: Annotated[str | None, Query(alias="from", description="First month, YYYY-MM "
                                           "(default: 11 months before `to`)")] = None,
        to: Annotated[str | None, Query(description="Last month, YYYY-MM (default: this month)")] = None,
        kpi: Annotated[list[str] | None, Query(description="KPIs to return (repeat, or comma-separated); "
                                               "default: all")] = None,
    ) -> dict:
        """The caller's tenant's monthly KPI series from `analytics.kpi_monthly`, with unit, currency
        and the tenant's last sync. Read as the KPI reader role, which may read that table only."""
        try:
            query = KpiQuery.parse(from_, to, kpi, datetime.now(UTC).date())
        except KpiQueryError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        with engine.begin() as conn:
            tenant = conn.execute(
                text("SELECT tenant_name, last_sync FROM app.xero_connections "
                     "WHERE tenant_id = :t AND user_id = :u AND status <> 'disconnected'"),
                {"t": tenant_id, "u": caller.user_id},
            ).first()
            if tenant is None:
                raise HTTPException(status_code=404, detail="no such Xero tenant")
            record_audit(conn, "kpis_read", user_id=caller.user_id, tenant_id=tenant_id,
                         ip_address=_client_ip(request), table_accessed="analytics.kpi_monthly",
                         metadata={"from": f"{query.start:%Y-%m}", "to": f"{query.end:%Y-%m}",
                                   "kpis": len(query.kpis)})
            series = read_kpis(conn, tenant_id, query)
        return {"tenantId": tenant_id, "tenantName": tenant.tenant_name, "lastSync": tenant.last_sync,
                "from": f"{query.start:%Y-%m}", "to": f"{query.end:%Y-%m}", "kpis": series}

    # ------------------------------------------------------------------ webhooks
    webhook_key = (settings.xero_webhook_key or "").encode("utf-8")

    def store_webhook(events: list[Any], ip: str | None, body_len: int) -> None:
        """Store the events of a well-signed delivery. Malformed events are skipped (and logged), never
        a 500: Xero would retry the whole delivery for 24 hours."""
        rows = [row for e in events if (row := _webhook_event_row(e)) is not None]
        if len(rows) < len(events):
            skipped = len(events) - len(rows)
            log.warning("webhook delivery: skipped %d malformed event(s) of %d", skipped, len(events))
        with engine.begin() as conn:
            stored = 0
            for row in rows:
                result = conn.execute(
                    text(
                        """
                        INSERT INTO app.webhook_events (tenant_id, tenant_type, event_category, event_type,
                            resource_id, resource_url, event_date)
                        VALUES (:t, :tt, :c, :et, :r, :u, CAST(:d AS timestamptz))
                        ON CONFLICT ON CONSTRAINT webhook_events_dedup DO NOTHING
                        """
                    ),
                    row,
                )
                stored += result.rowcount
            tenants = sorted({row["t"] for row in rows})
            record_audit(
                conn,
                "webhook_received",
                ip_address=ip,
                table_accessed="app.webhook_events",
                tenant_id=tenants[0] if len(tenants) == 1 else None,
                metadata={
                    "events": len(events),
                    "skipped": len(events) - len(rows),
                    "stored": stored,
                    "tenants": tenants,
                    "bytes": body_len,
                    "intent_to_receive": not events,
                    "verified": True,
                },
            )

    @app.post(
        "/xero/webhooks",
        tags=["webhooks"],
        status_code=200,
        responses={
            200: {"description": "Accepted (empty body)"},
            401: {"description": "Bad signature"},
            413: {"description": f"Body over {WEBHOOK_MAX_BYTES} bytes"},
        },
    )
    async def webhooks(request: Request) -> Response:
        """Xero webhooks: `x-xero-signature` checked in constant time; events stored for the orchestrator."""
        ip = _client_ip(request)
        body = await _read_at_most(request, WEBHOOK_MAX_BYTES)
        if body is None:
            await run_in_threadpool(
                anonymous_audit.record,
                "webhook_received",
                ip_address=ip,
                table_accessed="app.webhook_events",
                metadata={"verified": False, "too_large": True, "limit": WEBHOOK_MAX_BYTES},
            )
            return Response(status_code=413)
        given = request.headers.get("x-xero-signature", "").encode("utf-8", "replace")
        expected = base64.b64encode(hmac.new(webhook_key, body, hashlib.sha256).digest())
        ok = bool(webhook_key) and hmac.compare_digest(expected, given)
        if not ok:
            await run_in_threadpool(
                anonymous_audit.record,
                "webhook_received",
                ip_address=ip,
                outcome="denied",
                table_accessed="app.webhook_events",
                metadata={"verified": False, "bytes": len(body), "events": 0, "stored": 0},
            )
            return Response(status_code=401)
        try:
            payload = json.loads(body or b"{}")
            events = (payload.get("events") or []) if isinstance(payload, dict) else []
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
            events = []
        await run_in_threadpool(store_webhook, events if isinstance(events, list) else [], ip, len(body))
        return Response(status_code=200)

    # ------------------------------------------------------------------ health
    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM app.xero_connections LIMIT 1"))
            db = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            db = "unreachable"
        body = {"status": "ok" if db == "ok" else "degraded", "database": db, "demoMode": settings.demo_mode}
        return JSONResponse(body, status_code=200 if db == "ok" else 503)

    return app


async def _read_at_most(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes (before buffering it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _webhook_event_row(event: Any) -> dict[str, Any] | None:
    """The app.webhook_events row of one event, or None when it names no tenant and resource that fit.
    Optional fields that are not strings of a fitting length are left out."""
    if not isinstance(event, dict):
        return None
    tenant_id, resource_id = fitting_id(event.get("tenantId"), 255), fitting_id(event.get("resourceId"), 255)
    if tenant_id is None or resource_id is None:
        return None
    return {
        "t": tenant_id,
        "tt": clipped_text(event.get("tenantType"), 32),
        "c": fitting_id(event.get("eventCategory"), 32) or "UNKNOWN",
        "et": fitting_id(event.get("eventType"), 32) or "UNKNOWN",
        "r": resource_id,
        "u": fitting_id(event.get("resourceUrl"), 2048),
        "d": _event_date(event.get("eventDateUtc")),
    }


def _event_date(value: Any) -> str | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return None
