"""Fixtures of the OAuth service tests: the sandbox (a local Xero over real HTTP), the service on a
real port, the token vault, browser-like clients, and a log sink that the last test greps for tokens.
Helpers and constants live in oauth_testlib.py."""

import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from oauth_testlib import (
    _LOGGERS,
    CLIENT_ID,
    CLIENT_SECRET,
    LOG_SINK,
    SANDBOX_TENANTS,
    SECOND_XERO_USER,
    SEEN_SECRETS,
    Browser,
    LogSink,
    free_port,
    service_env_for,
)

from oauth_service.db import create_app_login, drop_app_login, make_engine
from oauth_service.settings import Settings
from oauth_service.vault import TokenVault


@pytest.fixture(autouse=True)
def _capture_logs() -> Iterator[LogSink]:
    """During each test of this folder: everything logged by the service, the vault, HTTP clients, the
    sandbox and SQLAlchemy (statements and parameters), at DEBUG, into LOG_SINK. Restored after each
    test so that other folders' tests are not slowed down."""
    root = logging.getLogger()
    root.addHandler(LOG_SINK)
    previous = {}
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        previous[name] = lg.level
        lg.setLevel(logging.INFO if name == "sqlalchemy.engine" else logging.DEBUG)
    yield LOG_SINK
    root.removeHandler(LOG_SINK)
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def sandbox():
    from xero_sandbox import SandboxConfig, SandboxServer, UserConfig

    config = SandboxConfig(
        # a second Xero user, for tests whose authorisations must not touch the first one's connections
        users=[
            UserConfig("sandbox-user", "demo@sandbox.invalid"),
            UserConfig(SECOND_XERO_USER, "second@sandbox.invalid"),
        ],
        seed=42,
        tenants=SANDBOX_TENANTS,
        invoices_per_tenant=5,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=None,
    )
    with SandboxServer(config, host="127.0.0.1", port=0) as sb:
        yield sb


@pytest.fixture(scope="session")
def tenant_ids(sandbox) -> list[str]:
    return [t.tenant_id for t in sandbox.tenants]


@pytest.fixture(scope="session")
def service_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def app_database_url(migrated_database_url) -> Iterator[str]:
    """The service's and the vault's own login (APP_DATABASE_URL), as in production."""
    name = f"xero_elt_test_{uuid.uuid4().hex[:10]}"
    url = create_app_login(migrated_database_url, name)
    SEEN_SECRETS.add(psycopg.conninfo.conninfo_to_dict(url)["password"])
    yield url
    drop_app_login(migrated_database_url, name)


@pytest.fixture(scope="session")
def service_env(sandbox, migrated_database_url, service_port, app_database_url) -> dict[str, str]:
    return service_env_for(sandbox.url, migrated_database_url, service_port, app_database_url)


@pytest.fixture(scope="session")
def settings(service_env) -> Settings:
    return Settings.from_env(service_env)


@pytest.fixture(scope="session")
def service(settings, service_port):
    from oauth_service.server import ServiceServer

    with ServiceServer(settings, host="127.0.0.1", port=service_port) as srv:
        yield srv


@pytest.fixture(scope="session")
def engine(migrated_database_url):
    eng = make_engine(migrated_database_url, pool_size=3)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def vault(settings, engine) -> Iterator[TokenVault]:
    v = TokenVault(settings, engine, actor="tests", cache=False)
    yield v


@pytest.fixture
def browser(service) -> Iterator[Browser]:
    b = Browser(service)
    yield b
    b.close()


@pytest.fixture
def make_browser(service):
    made: list[Browser] = []

    def make(user_id: str | None = None) -> Browser:
        b = Browser(service, user_id)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
