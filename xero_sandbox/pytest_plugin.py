"""Pytest fixtures: a running sandbox on a free loopback port.

Register from the root conftest with ``pytest_plugins = ["xero_sandbox.pytest_plugin"]`` (or import the
fixtures into a conftest: ``from xero_sandbox.pytest_plugin import *``).

- ``xero_sandbox_config``: the default small config (seed 42, 2 tenants, 50 invoices each); override it in a
  module to change what ``xero_sandbox_server`` runs.
- ``xero_sandbox_server``: a running ``SandboxServer`` (function scope: fresh state per test).
- ``xero_sandbox_factory``: ``factory(**SandboxConfig kwargs)`` starts more servers, all stopped at teardown.
- ``xero_sandbox_session``: one server shared by the whole session (read-only use, please).
- ``xero_sandbox_token``: a helper that completes the OAuth flow against a server and returns the token dict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from .config import GRANULAR_READ_SCOPE, SandboxConfig
from .server import SandboxServer

__all__ = [
    "xero_sandbox_config",
    "xero_sandbox_factory",
    "xero_sandbox_server",
    "xero_sandbox_session",
    "xero_sandbox_token",
    "sandbox_token",
]

# The granular scopes (apps created since 2 March 2026 may not ask for accounting.transactions*).
DEFAULT_SCOPE = "openid profile email " + GRANULAR_READ_SCOPE


class TimedSession(requests.Session):
    """A client's session that notes when each GET left: the pace of calls as the client made them
    (the pacing tests and bench/source_pacing.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[float] = []

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(time.monotonic())
        return super().get(*args, **kwargs)


def sandbox_token(sb: SandboxServer, scope: str = DEFAULT_SCOPE, **authorize_extra: str) -> dict:
    """Authorize (auto-consent) and exchange the code; returns Xero's token response."""
    redirect = "http://127.0.0.1:1/callback"
    code = sb.authorize_code(scope=scope, redirect_uri=redirect, **authorize_extra)
    r = requests.post(
        sb.token_url,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
        auth=(sb.config.client_id, sb.config.client_secret),
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


@pytest.fixture
def xero_sandbox_config() -> SandboxConfig:
    return SandboxConfig(seed=42, tenants=2, invoices_per_tenant=50)


@pytest.fixture
def xero_sandbox_server(xero_sandbox_config: SandboxConfig) -> Iterator[SandboxServer]:
    with SandboxServer(xero_sandbox_config, host="127.0.0.1", port=0) as sb:
        yield sb


@pytest.fixture
def xero_sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    started: list[SandboxServer] = []

    def factory(config: SandboxConfig | None = None, **kw: Any) -> SandboxServer:
        cfg = config or SandboxConfig(**kw)
        sb = SandboxServer(cfg, host="127.0.0.1", port=0).start()
        started.append(sb)
        return sb

    yield factory
    for sb in started:
        sb.stop()


@pytest.fixture(scope="session")
def xero_sandbox_session() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(seed=42, tenants=2, invoices_per_tenant=50), port=0) as sb:
        yield sb


@pytest.fixture
def xero_sandbox_token() -> Callable[..., dict]:
    return sandbox_token
