"""Sandbox tests: fixtures from the plugin (the root conftest may also register it via pytest_plugins)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import pytest
import requests

from xero_sandbox import SandboxServer
from xero_sandbox.pytest_plugin import *  # noqa: F403
from xero_sandbox.pytest_plugin import sandbox_token


class Api:
    """A tiny Xero API client for tests: bearer + tenant headers, JSON results."""

    def __init__(self, sb: SandboxServer, token: dict) -> None:
        self.sb = sb
        self.token = token
        self.session = requests.Session()

    def headers(self, tenant_id: str, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token['access_token']}",
            "xero-tenant-id": tenant_id,
            "Accept": "application/json",
            **extra,
        }

    def get(self, path: str, tenant_id: str, params: dict | None = None, **headers: str) -> requests.Response:
        return self.session.get(
            f"{self.sb.api_url}/{path}", params=params, headers=self.headers(tenant_id, **headers), timeout=30
        )


@pytest.fixture
def api_factory() -> Callable[..., Api]:
    def make(sb: SandboxServer, **authorize_extra: str) -> Api:
        return Api(sb, sandbox_token(sb, **authorize_extra))

    return make


@pytest.fixture
def api(xero_sandbox_server: SandboxServer, api_factory: Callable[..., Api]) -> Api:
    return api_factory(xero_sandbox_server)


async def asgi_get(
    sb: SandboxServer,
    path: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
    on_body: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One GET through the sandbox's ASGI app in this process (no sockets): for tests that need thousands
    of calls quickly, or control over when the answer is sent (``on_body`` runs before each body chunk)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(params or {}).encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", sb.port),
    }
    out: dict = {"body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            if on_body is not None:
                await on_body()
            out["body"] += message.get("body", b"")

    await sb.app(scope, receive, send)
    return out["status"], out["headers"], out["body"]
