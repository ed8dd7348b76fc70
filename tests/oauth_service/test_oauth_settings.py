"""Settings validation: clear errors naming every variable at fault."""

import pytest

from oauth_service.settings import (
    DEFAULT_SCOPES,
    DEMO_JWT_SECRET,
    XERO_URL_DEFAULTS,
    Settings,
    SettingsError,
    generate_key,
    is_loopback_host,
)

KEY = generate_key()
SANDBOX = "http://127.0.0.1:8999"
SANDBOX_URLS = {
    "XERO_AUTHORIZE_URL": f"{SANDBOX}/identity/connect/authorize",
    "XERO_TOKEN_URL": f"{SANDBOX}/connect/token",
    "XERO_REVOCATION_URL": f"{SANDBOX}/connect/revocation",
    "XERO_CONNECTIONS_URL": f"{SANDBOX}/connections",
    "XERO_API_URL": f"{SANDBOX}/api.xro/2.0",
}


def full_env(**overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": "postgresql://owner:pw@db.example.com:5432/xero",
        "APP_DATABASE_URL": "postgresql://xero_elt_service:pw@db.example.com:5432/xero",
        "XERO_CLIENT_ID": "client",
        "XERO_CLIENT_SECRET": "secret",
        "XERO_REDIRECT_URI": "https://api.example.com/xero/auth/callback",
        "AUTH_JWT_SECRET": "s" * 40,
        "APP_RETURN_URL": "https://app.example.com/settings/xero",
        "APP_ORIGIN": "https://app.example.com",
        "TOKEN_ENCRYPTION_KEY": KEY,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def test_complete_configuration_uses_xero_defaults_and_granular_scopes():
    s = Settings.from_env(full_env())
    assert s.xero_authorize_url == "https://login.xero.com/identity/connect/authorize"
    assert s.xero_token_url == "https://identity.xero.com/connect/token"
    assert s.xero_revocation_url == "https://identity.xero.com/connect/revocation"
    assert s.xero_connections_url == "https://api.xero.com/connections"
    assert s.xero_api_url == "https://api.xero.com/api.xro/2.0"
    assert s.xero_scopes == DEFAULT_SCOPES
    assert "accounting.transactions.read" not in s.xero_scopes
    assert s.auth_jwt_audience == "authenticated"
    assert not s.demo_mode and not s.xero_is_loopback
    assert s.state_cookie_required
    # secrets are kept out of the repr (and so out of logs of the settings object)
    assert KEY not in repr(s) and "s" * 40 not in repr(s)


def test_empty_environment_lists_every_problem_in_one_error():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({})
    message = str(err.value)
    for name in (
        "DATABASE_URL",
        "XERO_CLIENT_ID",
        "XERO_CLIENT_SECRET",
        "XERO_REDIRECT_URI",
        "AUTH_JWT_SECRET or AUTH_JWKS_URL",
        "APP_RETURN_URL",
        "TOKEN_ENCRYPTION_KEY",
    ):
        assert name in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"DATABASE_URL": "mysql://x@h/db"}, "DATABASE_URL must be a postgresql:// URL"),
        ({"DATABASE_URL": "postgresql://user@host:5432/"}, "DATABASE_URL must name a database"),
        ({"TOKEN_ENCRYPTION_KEY": "not a key!"}, "TOKEN_ENCRYPTION_KEY key #1 is not URL-safe base64"),
        ({"TOKEN_ENCRYPTION_KEY": f"{KEY},c2hvcnQ="}, "TOKEN_ENCRYPTION_KEY key #2 decodes to 5 bytes"),
        ({"XERO_TOKEN_URL": "http://identity.xero.com/connect/token"}, "XERO_TOKEN_URL must use https"),
        ({"XERO_API_URL": "ftp://x"}, "XERO_API_URL must be an absolute http(s) URL"),
        ({"XERO_REDIRECT_URI": "http://api.example.com/cb"}, "XERO_REDIRECT_URI must use https"),
        ({"AUTH_JWKS_URL": "https://x.supabase.co/auth/v1/.well-known/jwks.json"}, "set exactly one"),
        ({"AUTH_JWT_SECRET": "short"}, "AUTH_JWT_SECRET is too short"),
        ({"AUTH_JWT_SECRET": None}, "AUTH_JWT_SECRET or AUTH_JWKS_URL is required"),
        ({"XERO_SCOPES": "accounting.invoices.read"}, "XERO_SCOPES must include offline_access"),
        ({"APP_ORIGIN": "https://app.example.com/path"}, "APP_ORIGIN must be an origin"),
        ({"DEMO_MODE": "maybe"}, "DEMO_MODE must be 1 or 0"),
        ({"OAUTH_STATE_TTL_SECONDS": "soon"}, "OAUTH_STATE_TTL_SECONDS must be an integer"),
        ({"OAUTH_STATE_COOKIE": "sometimes"}, "OAUTH_STATE_COOKIE must be 'required' or 'optional'"),
    ],
)
def test_malformed_values_are_named(overrides, expected):
    with pytest.raises(SettingsError, match="Invalid OAuth service configuration") as err:
        Settings.from_env(full_env(**overrides))
    assert expected in str(err.value)


def test_loopback_xero_urls_allow_plain_http_and_custom_scopes():
    base = "http://127.0.0.1:8999"
    s = Settings.from_env(
        full_env(
            XERO_AUTHORIZE_URL=f"{base}/identity/connect/authorize",
            XERO_TOKEN_URL=f"{base}/connect/token",
            XERO_REVOCATION_URL=f"{base}/connect/revocation",
            XERO_CONNECTIONS_URL=f"{base}/connections",
            XERO_API_URL=f"{base}/api.xro/2.0/",
            XERO_SCOPES="offline_access accounting.transactions.read",
            AUTH_JWT_SECRET=None,
            AUTH_JWKS_URL="https://x.supabase.co/auth/v1/.well-known/jwks.json",
            AUTH_JWT_AUDIENCE="my-aud",
        )
    )
    assert s.xero_is_loopback
    assert s.xero_api_url == f"{base}/api.xro/2.0"
    assert s.xero_scopes == ("offline_access", "accounting.transactions.read")
    assert s.auth_jwks_url and s.auth_jwt_secret is None and s.auth_jwt_audience == "my-aud"
    # one loopback URL among real ones is not enough to allow plain http anywhere
    mixed = s.replace(xero_token_url="https://identity.xero.com/connect/token")
    assert not mixed.xero_is_loopback


@pytest.mark.parametrize("name", XERO_URL_DEFAULTS)
def test_each_xero_url_variable_sets_its_own_setting_and_is_named_when_wrong(name):
    url = f"https://xero.example.test/{name.lower()}"
    s = Settings.from_env(full_env(**{name: url}))
    assert getattr(s, name.lower()) == url
    assert s.xero_urls == {**XERO_URL_DEFAULTS, name: url}
    others = [n for n in XERO_URL_DEFAULTS if n != name]
    # demo mode with this one URL off the sandbox: it, and only it, is named
    with pytest.raises(SettingsError) as err:
        Settings.from_env(full_env(DEMO_MODE="1", **{**SANDBOX_URLS, name: url}))
    assert f"{name} point elsewhere" in str(err.value) and not any(n in str(err.value) for n in others)
    # settings built by hand with this one URL on plain http elsewhere: named too
    with pytest.raises(SettingsError) as err:
        s.replace(**{name.lower(): "http://xero.example.test"}).check_service_configured()
    assert f"{name} must use https" in str(err.value) and not any(n in str(err.value) for n in others)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("sandbox.localhost", False),  # up to the resolver, possibly DNS
        ("localhost.example.com", False),
        ("0.0.0.0", False),  # noqa: S104 - every interface
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_one_loopback_rule_for_the_sandbox_urls_and_the_demo_listener(host, loopback):
    """Demo mode is confined by one rule: the Xero URLs it may use and the addresses it may listen on."""
    from oauth_service.server import _check_host

    assert is_loopback_host(host) is loopback
    in_url = f"[{host.strip('[]')}]" if ":" in host else host
    demo_env = full_env(DEMO_MODE="1", **{name: f"http://{in_url}:8999/x" for name in XERO_URL_DEFAULTS})
    if loopback:
        demo = Settings.from_env(demo_env)
        _check_host(demo, host)
    else:
        with pytest.raises(SettingsError, match="must use https"):
            Settings.from_env(demo_env)
        demo = Settings.from_env(full_env(DEMO_MODE="1", **SANDBOX_URLS))
        with pytest.raises(SettingsError, match="DEMO_MODE=1 listens on loopback only"):
            _check_host(demo, host)


def test_demo_mode_is_explicit_and_loud(caplog):
    with caplog.at_level("WARNING", logger="oauth_service.settings"):
        s = Settings.from_env(
            {"DATABASE_URL": "postgresql://u@localhost/db", "DEMO_MODE": "1", **SANDBOX_URLS}
        )
    assert s.demo_mode
    assert s.auth_jwt_secret == DEMO_JWT_SECRET
    assert s.xero_client_id == "sandbox-client-id"
    assert len(s.token_encryption_keys) == 1
    assert not s.state_cookie_required
    assert "DEMO MODE" in caplog.text or "DEMO_MODE=1" in caplog.text


def test_settings_built_by_hand_without_auth_refuse_to_serve():
    s = Settings(database_url="postgresql://u@h/db", token_encryption_keys=(KEY,))
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET or AUTH_JWKS_URL"):
        s.check_service_configured()
    from oauth_service.app import create_app

    with pytest.raises(SettingsError):
        create_app(s)


def test_state_cookie_optional_is_refused_outside_demo_mode():
    with pytest.raises(SettingsError) as err:
        Settings.from_env(full_env(OAUTH_STATE_COOKIE="optional"))
    assert "OAUTH_STATE_COOKIE" in str(err.value) and "DEMO_MODE=1" in str(err.value)
    assert Settings.from_env(full_env(OAUTH_STATE_COOKIE="required")).state_cookie_required
    demo = Settings.from_env(full_env(OAUTH_STATE_COOKIE="optional", DEMO_MODE="1", **SANDBOX_URLS))
    assert demo.demo_mode and not demo.state_cookie_required
    # built by hand: the service refuses it too
    from oauth_service.app import create_app

    by_hand = Settings.from_env(full_env()).replace(state_cookie_required=False)
    with pytest.raises(SettingsError, match="OAUTH_STATE_COOKIE"):
        create_app(by_hand)


def test_app_database_url_and_anonymous_audit_settings():
    s = Settings.from_env(full_env())
    assert s.app_database_url and s.anonymous_audit_per_minute == 10
    with pytest.raises(SettingsError, match="APP_DATABASE_URL is required") as err:
        Settings.from_env(full_env(APP_DATABASE_URL=None))
    assert "create-app-login" in str(err.value)
    assert Settings.from_env(full_env(APP_DATABASE_URL=None), for_service=False).app_database_url is None
    app_url = "postgresql://xero_elt_service:pw@db.example.com:5432/xero"
    s = Settings.from_env(full_env(APP_DATABASE_URL=app_url, AUDIT_ANONYMOUS_PER_MINUTE="3"))
    assert s.app_database_url == app_url and s.anonymous_audit_per_minute == 3
    assert "pw@" not in repr(s)
    with pytest.raises(SettingsError, match="APP_DATABASE_URL must be a postgresql:// URL"):
        Settings.from_env(full_env(APP_DATABASE_URL="mysql://u@h/db"))
    with pytest.raises(SettingsError, match="AUDIT_ANONYMOUS_PER_MINUTE"):
        Settings.from_env(full_env(AUDIT_ANONYMOUS_PER_MINUTE="0"))


def test_demo_mode_is_refused_against_real_xero():
    """Demo mode's JWT secret and client credentials are public: it serves only the local sandbox."""
    with pytest.raises(SettingsError, match="DEMO_MODE=1 serves only against the local sandbox") as err:
        Settings.from_env({"DATABASE_URL": "postgresql://u@localhost/db", "DEMO_MODE": "1"})
    assert all(name in str(err.value) for name in XERO_URL_DEFAULTS)
    # one real URL among the sandbox's is enough to refuse, and is named
    real_token_url = {**SANDBOX_URLS, "XERO_TOKEN_URL": "https://identity.xero.com/connect/token"}
    with pytest.raises(SettingsError) as err:
        Settings.from_env(full_env(DEMO_MODE="1", **real_token_url))
    assert "XERO_TOKEN_URL point elsewhere" in str(err.value)
    assert "XERO_API_URL" not in str(err.value)
    # built by hand: the service refuses it too
    from oauth_service.app import create_app

    demo = Settings.from_env(full_env(DEMO_MODE="1", **SANDBOX_URLS))
    with pytest.raises(SettingsError, match="DEMO_MODE=1 serves only against the local sandbox"):
        create_app(demo.replace(xero_api_url="https://api.xero.com/api.xro/2.0"))
    # outside demo mode real Xero is of course fine, and the pipeline's vault has no such rule
    assert not Settings.from_env(full_env()).xero_is_loopback
    assert Settings.from_env(
        {"DATABASE_URL": "postgresql://u@localhost/db", "DEMO_MODE": "1"}, for_service=False
    ).demo_mode
