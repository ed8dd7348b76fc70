"""The ASGI app and ``SandboxServer``: uvicorn in a background thread on one loopback origin."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote
from urllib.request import Request as UrlRequest
from urllib.request import urlopen

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import accounting, admin, http_identity
from .config import GRANULAR_READ_SCOPE, SandboxConfig
from .core import Sandbox
from .data import TenantInfo
from .faults import FaultRule


class _QuietDrops(logging.Filter):
    """Dropped-connection faults raise on purpose; keep them out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionAbortedError)


def build_app(sb: Sandbox) -> Starlette:
    async def root(request: Request) -> Response:
        return JSONResponse({"service": "xero-sandbox", "tenants": len(sb.tenants), "clock": sb.clock_json()})

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("The resource you're looking for cannot be found", 404)

    routes = [Route("/", root, methods=["GET"])]
    routes += http_identity.routes(sb) + accounting.routes(sb) + admin.routes(sb)
    async def bad_json(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"invalid JSON body: {exc}"}, 400)

    app = Starlette(routes=routes, exception_handlers={404: not_found, json.JSONDecodeError: bad_json})
    app.state.sandbox = sb
    return app


class SandboxServer:
    """A running sandbox. ``with SandboxServer(cfg) as sb:`` starts it and returns once it is listening."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.config = config or SandboxConfig()
        self.host = host
        self.port = port
        self.sandbox = Sandbox(self.config)
        self.app = build_app(self.sandbox)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.log_level = log_level

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> SandboxServer:
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        cfg = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level=self.log_level,
            lifespan="off",
            access_log=False,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, name="xero-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the sandbox server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError("the sandbox server did not start within 30 s")
            time.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        self.sandbox.identity.issuer = self.url
        self.sandbox.webhooks.base_url = self.url
        return self

    def stop(self) -> None:
        self.sandbox.webhooks.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/identity/connect/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.url}/connect/token"

    @property
    def revocation_url(self) -> str:
        return f"{self.url}/connect/revocation"

    @property
    def connections_url(self) -> str:
        return f"{self.url}/connections"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api.xro/2.0"

    def env(self) -> dict[str, str]:
        """The XERO_* settings that point a client at this sandbox."""
        return {
            "XERO_AUTHORIZE_URL": self.authorize_url,
            "XERO_TOKEN_URL": self.token_url,
            "XERO_REVOCATION_URL": self.revocation_url,
            "XERO_CONNECTIONS_URL": self.connections_url,
            "XERO_API_URL": self.api_url,
            "XERO_CLIENT_ID": self.config.client_id,
            "XERO_CLIENT_SECRET": self.config.client_secret,
        }

    # -- Python mirror of the admin API ----------------------------------------------------------------

    @property
    def tenants(self) -> list[TenantInfo]:
        return self.sandbox.tenant_infos()

    @property
    def clock(self) -> Any:
        return self.sandbox.clock

    def truth(self, tenant_id: str, resource: str = "Invoices") -> dict:
        return self.sandbox.truth(tenant_id, resource)

    def records(
        self, tenant_id: str, resource: str = "Invoices", include_deleted: bool = False
    ) -> Iterator[dict]:
        return self.sandbox.records(tenant_id, resource, include_deleted)

    def truth_records(self, tenant_id: str, resource: str = "Invoices") -> Iterator[dict]:
        """Alias of ``records``: what a perfect sync must hold, record by record (DELETED excluded)."""
        return self.sandbox.records(tenant_id, resource)

    def mutate(self, tenant_id: str, action: str, **kw: Any) -> dict:
        return self.sandbox.mutator.apply(tenant_id, action, **kw)

    def advance_clock(self, seconds: float) -> int:
        return self.sandbox.clock.advance(seconds)

    def set_clock_speed(self, speed: float) -> None:
        self.sandbox.clock.set_speed(speed)

    def now_ms(self) -> int:
        return self.sandbox.clock.now_ms()

    def stats(self) -> dict:
        return self.sandbox.stats()

    def reset_stats(self, limits: bool = True) -> None:
        self.sandbox.reset_stats(limits)

    def hold_calls(self, tenant_id: str | None = None, timeout: float = 30.0) -> AbstractContextManager[None]:
        """``with sb.hold_calls(tid):`` admitted accounting calls stay in flight until the block ends."""
        return self.sandbox.hold_calls(tenant_id, timeout)

    def add_fault(self, kind: str, **kw: Any) -> FaultRule:
        return self.sandbox.add_fault(kind=kind, **kw)

    def clear_faults(self) -> None:
        self.sandbox.faults.clear()

    def set_fault_rates(self, **kw: Any) -> None:
        self.sandbox.set_fault_rates(**kw)

    def set_offline(self, tenant_id: str, offline: bool = True) -> None:
        self.sandbox.set_offline(tenant_id, offline)

    def disconnect_tenant(self, tenant_id: str) -> int:
        return self.sandbox.identity.drop_tenant_connections(tenant_id)

    def revoke_authorisations(self, user_id: str | None = None) -> int:
        return self.sandbox.identity.revoke_authorisations(user_id)

    def set_consent(
        self, user_id: str | None = None, tenants: list[str] | None = None, error: str | None = None
    ) -> None:
        c = self.sandbox.identity.consent
        c.user_id, c.tenants, c.error = user_id, tenants, error

    def expire_access_tokens(self) -> int:
        return self.sandbox.identity.expire_access_tokens()

    def configure_webhooks(self, url: str | None = None, key: str | None = None) -> None:
        self.sandbox.webhooks.configure(url, key)

    def intent_to_receive(self, url: str | None = None, key: str | None = None) -> dict:
        return self.sandbox.webhooks.intent_to_receive(url, key)

    def webhook_deliveries(self) -> list[dict]:
        return self.sandbox.webhooks.deliveries_json()

    def authorize_code(
        self,
        scope: str = "openid profile email " + GRANULAR_READ_SCOPE,
        redirect_uri: str = "http://127.0.0.1/callback",
        state: str = "s",
        **extra: str,
    ) -> str:
        """Run the authorize step over HTTP (no redirect follow) and return the code — a test convenience."""
        q = "&".join(
            f"{k}={quote(v)}"
            for k, v in {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "state": state,
                **extra,
            }.items()
        )
        import http.client

        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.request("GET", f"/identity/connect/authorize?{q}")
        resp = conn.getresponse()
        location = resp.getheader("Location", "")
        conn.close()
        from urllib.parse import parse_qs, urlsplit

        qs = parse_qs(urlsplit(location).query)
        if "code" not in qs:
            raise RuntimeError(f"authorize did not return a code: {resp.status} {location}")
        return qs["code"][0]

    def admin(self, method: str, path: str, body: dict | None = None) -> Any:
        """Call the HTTP admin API (handy from other processes' point of view, used by the CLI)."""
        data = json.dumps(body).encode() if body is not None else None
        req = UrlRequest(  # noqa: S310 (loopback URL built here)
            f"{self.url}/__sandbox/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urlopen(req, timeout=30) as r:  # noqa: S310 (loopback URL built here)
            return json.loads(r.read())
