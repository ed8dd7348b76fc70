"""Sandbox tests: fixtures from the plugin (the root conftest may also register it via pytest_plugins)."""

from __future__ import annotations

from collections.abc import Callable

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
