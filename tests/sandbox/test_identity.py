"""Identity: authorize, token (code + PKCE + refresh rotation), revocation, connections — over real HTTP."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests_oauthlib import OAuth2Session

from xero_sandbox import SandboxConfig, SandboxServer, UserConfig
from xero_sandbox.pytest_plugin import sandbox_token

REDIRECT = "http://127.0.0.1:1/callback"
SCOPE = (
    "openid profile email offline_access accounting.invoices.read accounting.payments.read "
    "accounting.contacts.read"
)
AUTH = ("sandbox-client-id", "sandbox-client-secret")


def authorize(sb: SandboxServer, **params: str) -> requests.Response:
    q = {
        "response_type": "code",
        "client_id": sb.config.client_id,
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": "st4te",
        **params,
    }
    return requests.get(sb.authorize_url, params=q, allow_redirects=False, timeout=10)


def redirect_query(r: requests.Response) -> dict[str, str]:
    assert r.status_code == 302, r.text
    loc = r.headers["Location"]
    assert loc.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


def token(sb: SandboxServer, auth: tuple[str, str] | None = AUTH, **form: str) -> requests.Response:
    return requests.post(sb.token_url, data=form, auth=auth, timeout=10)


def exchange(sb: SandboxServer, **authorize_params: str) -> dict:
    code = redirect_query(authorize(sb, **authorize_params))["code"]
    r = token(sb, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert r.status_code == 200, r.text
    return r.json()


def refresh(sb: SandboxServer, refresh_token: str) -> requests.Response:
    return token(sb, grant_type="refresh_token", refresh_token=refresh_token)


def api_status(sb: SandboxServer, access: str, tenant_id: str, path: str = "Invoices") -> requests.Response:
    return requests.get(
        f"{sb.api_url}/{path}",
        timeout=10,
        headers={
            "Authorization": f"Bearer {access}",
            "xero-tenant-id": tenant_id,
            "Accept": "application/json",
        },
    )


def test_requests_oauthlib_completes_code_flow_with_pkce_and_refresh(
    xero_sandbox_server, monkeypatch
) -> None:
    sb = xero_sandbox_server
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback only
    oauth = OAuth2Session(sb.config.client_id, redirect_uri=REDIRECT, scope=SCOPE.split(), pkce="S256")
    url, state = oauth.authorization_url(sb.authorize_url)
    assert "code_challenge=" in url
    r = requests.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and redirect_query(r)["state"] == state
    tok = oauth.fetch_token(
        sb.token_url, authorization_response=r.headers["Location"], client_secret=sb.config.client_secret
    )
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 1800 and tok["refresh_token"]
    conns = oauth.get(sb.connections_url).json()
    assert {c["tenantId"] for c in conns} == {t.tenant_id for t in sb.tenants}
    r = oauth.get(
        f"{sb.api_url}/Invoices",
        headers={"xero-tenant-id": conns[0]["tenantId"], "Accept": "application/json"},
    )
    assert r.status_code == 200 and r.json()["Invoices"]
    new = oauth.refresh_token(sb.token_url, auth=AUTH)
    assert new["refresh_token"] != tok["refresh_token"] and new["access_token"] != tok["access_token"]
    assert oauth.get(sb.connections_url).status_code == 200


def test_authorize_validates_client_redirect_scope_and_type(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    r = authorize(sb, client_id="nope")
    assert r.status_code == 400 and "Location" not in r.headers
    assert authorize(sb, redirect_uri="https://evil.example/cb").status_code == 400
    assert redirect_query(authorize(sb, scope="openid accounting.everything")) == {
        "error": "invalid_scope",
        "state": "st4te",
    }
    assert redirect_query(authorize(sb, response_type="token"))["error"] == "unsupported_response_type"
    assert redirect_query(authorize(sb, sandbox_deny="1")) == {"error": "access_denied", "state": "st4te"}
    sb.set_consent(error="access_denied")
    assert redirect_query(authorize(sb))["error"] == "access_denied"
    sb.set_consent()
    ok = redirect_query(authorize(sb))
    assert ok["state"] == "st4te" and ok["code"]


def test_configured_redirect_uris_are_enforced(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(redirect_uris=["http://localhost:9999/cb", "https://app.example/xero/callback"])
    assert authorize(sb).status_code == 400
    assert authorize(sb, redirect_uri="http://localhost:9999/cb").status_code == 302
    r = requests.get(
        sb.authorize_url,
        params={"response_type": "code", "client_id": sb.config.client_id, "scope": SCOPE,
                "redirect_uri": "https://app.example/xero/callback"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and r.headers["Location"].startswith("https://app.example/xero/callback?code=")


@pytest.mark.parametrize(
    "uri", ["http://app.example/cb", "http://10.0.0.5/cb", "ftp://localhost/cb", "https:///cb", "not a uri"]
)
def test_redirect_uris_xero_would_not_register_are_refused(uri) -> None:
    """Xero requires https redirect URIs, except plain http on localhost / loopback."""
    with pytest.raises(ValueError, match="https"):
        SandboxConfig(redirect_uris=[uri])
    for ok in ("https://app.example/cb", "http://localhost:8/cb", "http://127.0.0.1/cb", "http://[::1]:9/cb"):
        assert SandboxConfig(redirect_uris=[ok]).redirect_uris == [ok]


def test_code_exchange_rules(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    code = redirect_query(authorize(sb))["code"]
    bad = token(
        sb,
        auth=("sandbox-client-id", "wrong"),
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
    )
    assert bad.status_code == 400 and bad.json() == {"error": "invalid_client"}
    wrong_uri = token(sb, grant_type="authorization_code", code=code, redirect_uri="http://127.0.0.1:2/x")
    assert wrong_uri.json()["error"] == "invalid_grant"
    # client credentials in the body are accepted too
    ok = token(
        sb,
        auth=None,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id=AUTH[0],
        client_secret=AUTH[1],
    )
    assert ok.status_code == 200
    again = token(sb, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # a replayed code revokes what it issued
    assert refresh(sb, ok.json()["refresh_token"]).json()["error"] == "invalid_grant"
    late = redirect_query(authorize(sb))["code"]
    sb.advance_clock(301)
    assert (
        token(sb, grant_type="authorization_code", code=late, redirect_uri=REDIRECT).json()["error"]
        == "invalid_grant"
    )
    assert token(sb, grant_type="password").json()["error"] == "unsupported_grant_type"


def test_pkce_s256_is_checked(xero_sandbox_server) -> None:
    import base64
    import hashlib

    sb = xero_sandbox_server
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    code = redirect_query(authorize(sb, code_challenge=challenge, code_challenge_method="S256"))["code"]
    r = token(sb, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier="w" * 50)
    assert r.json()["error"] == "invalid_grant"
    code = redirect_query(authorize(sb, code_challenge=challenge, code_challenge_method="S256"))["code"]
    assert (
        token(sb, grant_type="authorization_code", code=code, redirect_uri=REDIRECT).json()["error"]
        == "invalid_grant"
    )
    # a good verifier with the client's secret
    code = redirect_query(authorize(sb, code_challenge=challenge, code_challenge_method="S256"))["code"]
    r = token(sb, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)
    assert r.status_code == 200 and r.json()["access_token"]


@pytest.mark.parametrize("method", ["plain", None])
def test_pkce_plain_is_refused_as_xero_supports_s256_only(xero_sandbox_server, method) -> None:
    sb = xero_sandbox_server
    params = {"code_challenge": "v" * 50} | ({"code_challenge_method": method} if method else {})
    q = redirect_query(authorize(sb, **params))  # no method given means "plain" (RFC 7636)
    assert q["error"] == "invalid_request" and "S256" in q["error_description"] and "code" not in q
    discovery = requests.get(f"{sb.url}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["code_challenge_methods_supported"] == ["S256"]


def _pkce_pair() -> tuple[str, str]:
    import base64
    import hashlib

    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_confidential_client_must_authenticate_everywhere(xero_sandbox_server) -> None:
    """Xero web apps are confidential: PKCE does not replace the secret at exchange, refresh or revoke."""
    sb = xero_sandbox_server
    verifier, challenge = _pkce_pair()
    code = redirect_query(authorize(sb, code_challenge=challenge, code_challenge_method="S256"))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    r = token(sb, auth=None, client_id=sb.config.client_id, **form)
    assert r.status_code == 400 and r.json() == {"error": "invalid_client"}
    r = token(sb, auth=(sb.config.client_id, "wrong-secret"), **form)
    assert r.status_code == 400 and r.json() == {"error": "invalid_client"}
    # the code was not consumed by the unauthenticated attempts; a secret in the body is fine too
    r = token(sb, auth=None, client_id=sb.config.client_id, client_secret=sb.config.client_secret, **form)
    assert r.status_code == 200, r.text
    rt = r.json()["refresh_token"]
    r = token(sb, auth=None, grant_type="refresh_token", refresh_token=rt, client_id=sb.config.client_id)
    assert r.status_code == 400 and r.json() == {"error": "invalid_client"}
    r = token(sb, auth=None, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 400 and r.json() == {"error": "invalid_client"}
    r = requests.post(sb.revocation_url, data={"token": rt, "client_id": sb.config.client_id}, timeout=10)
    assert r.status_code == 400 and r.json() == {"error": "invalid_client"}
    # nothing was refreshed or revoked by those: the token still works with the secret
    r = refresh(sb, rt)
    assert r.status_code == 200, r.text
    rt2 = r.json()["refresh_token"]
    r = requests.post(sb.revocation_url, data={"token": rt2}, auth=AUTH, timeout=10)
    assert r.status_code == 200
    assert refresh(sb, rt2).json()["error"] == "invalid_grant"
    discovery = requests.get(f"{sb.url}/.well-known/openid-configuration", timeout=10).json()
    assert "none" not in discovery["token_endpoint_auth_methods_supported"]


def test_public_pkce_clients_are_an_explicit_opt_in(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=5, allow_pkce_without_secret=True)
    verifier, challenge = _pkce_pair()
    cid = sb.config.client_id
    # without a verifier a secret is still required
    code = redirect_query(authorize(sb))["code"]
    r = token(sb, auth=None, client_id=cid, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    code = redirect_query(authorize(sb, code_challenge=challenge, code_challenge_method="S256"))["code"]
    r = token(
        sb,
        auth=None,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id=cid,
        code_verifier=verifier,
    )
    assert r.status_code == 200 and r.json()["access_token"]
    rt = r.json()["refresh_token"]
    r = token(sb, auth=None, grant_type="refresh_token", refresh_token=rt, client_id=cid)
    assert r.status_code == 200, r.text
    form = {"token": r.json()["refresh_token"], "client_id": cid}
    r = requests.post(sb.revocation_url, data=form, timeout=10)
    assert r.status_code == 200


def test_access_token_lives_1800_sandbox_seconds(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    tid = sb.tenants[0].tenant_id
    sb.advance_clock(1790)
    assert api_status(sb, tok["access_token"], tid).status_code == 200
    sb.advance_clock(15)
    r = api_status(sb, tok["access_token"], tid)
    assert r.status_code == 401
    assert r.json()["Title"] == "Unauthorized" and r.json()["Detail"].startswith("TokenExpired")
    assert (
        requests.get(
            sb.connections_url, headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10
        ).status_code
        == 401
    )


def test_refresh_rotation_with_grace_for_a_lost_response(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    r1 = exchange(sb)["refresh_token"]
    first = refresh(sb, r1).json()
    r2 = first["refresh_token"]
    assert r2 != r1
    # The response was "lost": replaying r1 within 30 minutes gives the same successor, not a fork.
    sb.advance_clock(600)
    replay = refresh(sb, r1)
    assert replay.status_code == 200 and replay.json()["refresh_token"] == r2
    # Once the successor is used, the old token is dead.
    r3 = refresh(sb, r2).json()["refresh_token"]
    bad = refresh(sb, r1)
    assert bad.status_code == 400 and bad.json() == {"error": "invalid_grant"}
    # r2 was rotated but r3 not yet used: grace applies for 30 minutes, then never again.
    assert refresh(sb, r2).json()["refresh_token"] == r3
    sb.advance_clock(1801)
    assert refresh(sb, r2).json()["error"] == "invalid_grant"
    assert refresh(sb, r3).status_code == 200


def test_two_workers_refreshing_at_once_lose_a_token(xero_sandbox_server) -> None:
    """The classic invalid_grant: B refreshes with a token A already rotated and whose successor A used."""
    sb = xero_sandbox_server
    shared = exchange(sb)["refresh_token"]
    a = refresh(sb, shared).json()["refresh_token"]
    refresh(sb, a)  # A carries on
    assert refresh(sb, shared).json()["error"] == "invalid_grant"  # B is out


def test_refresh_token_expires_after_60_days_unused(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    rt = exchange(sb)["refresh_token"]
    sb.advance_clock(59 * 86400)
    rt2 = refresh(sb, rt).json()["refresh_token"]  # used in time: a fresh 60 days
    sb.advance_clock(59 * 86400)
    rt3 = refresh(sb, rt2).json()["refresh_token"]
    sb.advance_clock(60 * 86400 + 1)
    assert refresh(sb, rt3).json()["error"] == "invalid_grant"


def test_revocation_removes_the_authorisation(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    tid = sb.tenants[0].tenant_id
    r = requests.post(sb.revocation_url, data={"token": tok["refresh_token"]}, auth=AUTH, timeout=10)
    assert r.status_code == 200
    assert refresh(sb, tok["refresh_token"]).json()["error"] == "invalid_grant"
    assert api_status(sb, tok["access_token"], tid).status_code == 401
    assert (
        requests.post(
            sb.revocation_url, data={"token": "x"}, auth=("sandbox-client-id", "bad"), timeout=10
        ).json()["error"]
        == "invalid_client"
    )


def test_connections_list_and_delete(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    h = {"Authorization": f"Bearer {tok['access_token']}"}
    conns = requests.get(sb.connections_url, headers=h, timeout=10).json()
    assert len(conns) == 2
    assert set(conns[0]) == {
        "id",
        "authEventId",
        "tenantId",
        "tenantType",
        "tenantName",
        "createdDateUtc",
        "updatedDateUtc",
    }
    gone, kept = conns
    r = requests.delete(f"{sb.connections_url}/{gone['id']}", headers=h, timeout=10)
    assert r.status_code == 204 and r.content == b""
    assert requests.delete(f"{sb.connections_url}/{gone['id']}", headers=h, timeout=10).status_code == 404
    assert [c["id"] for c in requests.get(sb.connections_url, headers=h, timeout=10).json()] == [kept["id"]]
    denied = api_status(sb, tok["access_token"], gone["tenantId"])
    assert denied.status_code == 403 and denied.json()["Detail"] == "AuthenticationUnsuccessful"
    assert api_status(sb, tok["access_token"], kept["tenantId"]).status_code == 200


def test_disconnect_from_xero_side(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    tid = sb.tenants[1].tenant_id
    assert sb.disconnect_tenant(tid) == 1
    assert api_status(sb, tok["access_token"], tid).status_code == 403


def test_consent_chooses_tenants_and_user(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(
        tenants=3,
        invoices_per_tenant=5,
        users=[UserConfig("user-a", "a@example.com"), UserConfig("user-b", "b@example.com")],
    )
    t0, t1, t2 = (t.tenant_id for t in sb.tenants)
    tok_a = exchange(sb, sandbox_tenants=f"{t0},{t2}")
    conns = requests.get(
        sb.connections_url, headers={"Authorization": f"Bearer {tok_a['access_token']}"}, timeout=10
    ).json()
    assert {c["tenantId"] for c in conns} == {t0, t2}
    assert api_status(sb, tok_a["access_token"], t1).status_code == 403
    sb.set_consent(user_id="b@example.com", tenants=[t1])
    tok_b = exchange(sb)
    conns_b = requests.get(
        sb.connections_url, headers={"Authorization": f"Bearer {tok_b['access_token']}"}, timeout=10
    ).json()
    assert [c["tenantId"] for c in conns_b] == [t1]
    import jwt

    claims = jwt.decode(tok_b["id_token"], options={"verify_signature": False})
    assert claims["email"] == "b@example.com" and claims["aud"] == sb.config.client_id


def test_broad_scopes_are_invalid_for_a_new_app(xero_sandbox_server) -> None:
    """Apps created since 2 March 2026 must use the granular scopes: the broad ones are invalid_scope."""
    sb = xero_sandbox_server
    for broad in ("accounting.transactions.read", "accounting.transactions"):
        q = redirect_query(authorize(sb, scope=f"offline_access {broad} accounting.contacts.read"))
        assert q == {"error": "invalid_scope", "state": "st4te"}
    discovery = requests.get(f"{sb.url}/.well-known/openid-configuration", timeout=10).json()
    assert "accounting.transactions.read" not in discovery["scopes_supported"]
    assert "accounting.invoices.read" in discovery["scopes_supported"]
    # the sandbox's own conveniences ask for the granular scopes
    from xero_sandbox.pytest_plugin import DEFAULT_SCOPE

    tok = sandbox_token(sb)
    assert tok["scope"] == DEFAULT_SCOPE
    assert not any(s.startswith("accounting.transactions") for s in tok["scope"].split())
    code = sb.authorize_code()
    r = token(sb, grant_type="authorization_code", code=code, redirect_uri="http://127.0.0.1/callback")
    assert r.status_code == 200 and "accounting.transactions" not in r.json()["scope"]
    tid = sb.tenants[0].tenant_id
    for path in ("Invoices", "CreditNotes", "Payments", "Contacts", "Accounts", "Organisation"):
        assert api_status(sb, tok["access_token"], tid, path).status_code == 200, path


def test_a_refresh_asking_for_scopes_not_granted_is_invalid_scope(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    form = {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]}
    r = token(sb, **form, scope="accounting.invoices.read accounting.journals.read")  # journals: not granted
    assert r.status_code == 400 and r.json() == {"error": "invalid_scope"}
    assert r.headers["Cache-Control"] == "no-store"
    again = token(sb, **form)  # the refused call consumed nothing: the refresh token still works
    assert again.status_code == 200 and again.json()["scope"] == tok["scope"]


def test_scopes_gate_endpoints_and_refresh_tokens(xero_sandbox_factory) -> None:
    # an app created before 2 March 2026 may still use the broad scopes
    sb = xero_sandbox_factory(tenants=1, invoices_per_tenant=5, broad_scopes=True)
    tid = sb.tenants[0].tenant_id
    tok = sandbox_token(sb, scope="accounting.transactions.read")
    assert "refresh_token" not in tok and "id_token" not in tok
    assert api_status(sb, tok["access_token"], tid, "Invoices").status_code == 200
    r = api_status(sb, tok["access_token"], tid, "Contacts")
    assert r.status_code == 401 and r.json()["Detail"] == "AuthorizationUnsuccessful"
    granular = sandbox_token(sb, scope="offline_access accounting.invoices.read accounting.settings.read")
    assert api_status(sb, granular["access_token"], tid, "Invoices").status_code == 200
    assert api_status(sb, granular["access_token"], tid, "Organisation").status_code == 200
    assert api_status(sb, granular["access_token"], tid, "Payments").status_code == 401


@pytest.mark.parametrize("header", [None, "Bearer nonsense", "Basic abc"])
def test_bad_bearer_is_401_problem_json(xero_sandbox_server, header) -> None:
    sb = xero_sandbox_server
    headers = {"xero-tenant-id": sb.tenants[0].tenant_id, "Accept": "application/json"}
    if header:
        headers["Authorization"] = header
    r = requests.get(f"{sb.api_url}/Invoices", headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json()["Status"] == 401 and r.json()["Title"] == "Unauthorized"


def test_tenant_header_is_required(xero_sandbox_server) -> None:
    sb = xero_sandbox_server
    tok = exchange(sb)
    assert api_status(sb, tok["access_token"], "").status_code == 403
    assert api_status(sb, tok["access_token"], "00000000-0000-4000-8000-000000000000").status_code == 403


def test_extra_clients_are_separate_apps(xero_sandbox_factory) -> None:
    sb = xero_sandbox_factory(
        config=SandboxConfig(tenants=1, invoices_per_tenant=3, extra_clients={"other-app": "other-secret"})
    )
    code = redirect_query(authorize(sb, client_id="other-app"))["code"]
    r = token(
        sb,
        auth=("other-app", "other-secret"),
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
    )
    assert r.status_code == 200
    main = exchange(sb)
    conns = requests.get(
        sb.connections_url, headers={"Authorization": f"Bearer {main['access_token']}"}, timeout=10
    ).json()
    assert len(conns) == 1  # the other app's connection is not this app's


def test_id_token_verifies_against_the_published_keys(xero_sandbox_server) -> None:
    import jwt

    sb = xero_sandbox_server
    tok = exchange(sb)
    disco = requests.get(f"{sb.url}/.well-known/openid-configuration", timeout=10).json()
    assert disco["issuer"] == sb.url and disco["token_endpoint"] == sb.token_url
    key = jwt.PyJWKClient(disco["jwks_uri"]).get_signing_key_from_jwt(tok["id_token"]).key
    # The sandbox clock may differ from this machine's clock: check the signature and claims, not times.
    claims = jwt.decode(
        tok["id_token"],
        key,
        algorithms=["RS256"],
        audience=sb.config.client_id,
        issuer=sb.url,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["email"] == sb.config.users[0].email
    access = jwt.decode(
        tok["access_token"],
        key,
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_nbf": False, "verify_aud": False},
    )
    assert access["client_id"] == sb.config.client_id and access["authentication_event_id"]
    me = requests.get(
        disco["userinfo_endpoint"], headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10
    ).json()
    assert me["sub"] == claims["sub"]
