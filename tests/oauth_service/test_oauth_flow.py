"""The HTTP API against the sandbox over real HTTP: connect, list, disconnect, state and JWT checks."""

import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import jwt
import pytest
from oauth_testlib import (
    APP_ORIGIN,
    CLIENT_ID,
    CLIENT_SECRET,
    JWT_SECRET,
    SECOND_XERO_USER,
    SEEN_TOKENS,
    Browser,
    api_get,
    audit_rows,
    expire_in_db,
    free_port,
    stored_tokens,
    user_jwt,
    xero_connection_ids,
)
from sqlalchemy import text

from oauth_service.server import ServiceServer


def rows_for_user(engine, user_id: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM app.xero_connections WHERE user_id = :u ORDER BY tenant_id"), {"u": user_id}
        ).all()


def test_full_flow_two_organisations_list_and_disconnect(
    browser, make_browser, sandbox, tenant_ids, engine, vault
):
    mine = sorted(tenant_ids[0:2])
    outcome = browser.connect(mine)
    assert outcome == {"connected": ["2"]}

    rows = rows_for_user(engine, browser.user_id)
    assert [r.tenant_id for r in rows] == mine
    names = {t.tenant_id: t.tenant_name for t in sandbox.tenants}
    for r in rows:
        assert r.status == "active" and r.tenant_name == names[r.tenant_id]
        assert r.access_token.startswith("v1:") and r.refresh_token.startswith("v1:")
        assert r.xero_connection_id and r.auth_event_id and r.token_expires_at
        assert "offline_access" in r.scopes.split()
    assert rows[0].grant_id == rows[1].grant_id  # one authorisation, one shared refresh token

    # the list: the caller's tenants, status, dates; never a token
    listed = browser.connections()
    assert [c["tenantId"] for c in listed] == sorted(mine, key=lambda t: names[t])
    assert {c["status"] for c in listed} == {"active"}
    assert all(c["connectedAt"] and c["lastSync"] is None and c["tenantName"] for c in listed)
    body = browser.http.get(f"{browser.service.url}/xero/connections", headers=browser.auth).text
    for tenant in mine:
        access, refresh = stored_tokens(engine, vault.cipher, tenant)
        assert access not in body and refresh not in body
        assert "token" not in body.lower()

    # the vault's token works against the API, for both tenants
    for tenant in mine:
        token = vault.access_token_for(tenant)
        SEEN_TOKENS.add(token)
        assert api_get(sandbox, token, tenant).status_code == 200

    # another user sees none of them and cannot disconnect them
    other = make_browser()
    assert other.connections() == []
    r = other.http.delete(f"{other.service.url}/xero/connections/{mine[0]}", headers=other.auth)
    assert r.status_code == 404
    r = other.http.delete(f"{other.service.url}/xero/connections/{uuid.uuid4()}", headers=other.auth)
    assert r.status_code == 404

    # disconnect the first: Xero's connection deleted, tokens dropped; the second keeps working
    _, refresh_before = stored_tokens(engine, vault.cipher, mine[1])
    r = browser.http.delete(f"{browser.service.url}/xero/connections/{mine[0]}", headers=browser.auth)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenantId": mine[0],
        "status": "disconnected",
        "xeroConnectionDeleted": True,
        "revokedAtXero": False,
    }
    first = rows_for_user(engine, browser.user_id)[0]
    assert first.status == "disconnected" and first.access_token is None and first.refresh_token is None
    still = vault.access_token_for(mine[1])
    assert api_get(sandbox, still, mine[1]).status_code == 200
    present = httpx.get(f"{sandbox.url}/connections", headers={"Authorization": f"Bearer {still}"}).json()
    assert {c["tenantId"] for c in present} == {mine[1]}
    assert api_get(sandbox, still, mine[0]).status_code == 403

    # disconnect the second: the last tenant of the grant, so the refresh token is revoked at Xero
    r = browser.http.delete(f"{browser.service.url}/xero/connections/{mine[1]}", headers=browser.auth)
    assert r.status_code == 200 and r.json()["revokedAtXero"] is True
    dead = httpx.post(
        f"{sandbox.url}/connect/token",
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "refresh_token", "refresh_token": refresh_before},
    )
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert {c["status"] for c in browser.connections()} == {"disconnected"}
    # a second disconnect is harmless
    r = browser.http.delete(f"{browser.service.url}/xero/connections/{mine[1]}", headers=browser.auth)
    assert r.status_code == 200

    # every step audited with user, tenant, IP and outcome
    connected = audit_rows(engine, "xero_connected", user_id=browser.user_id)
    assert sorted(a.tenant_id for a in connected) == mine
    assert all(str(a.ip_address) == "127.0.0.1" and a.outcome == "success" for a in connected)
    disconnected = [
        a for a in audit_rows(engine, "xero_disconnected", user_id=browser.user_id) if a.outcome == "success"
    ]
    assert sorted({a.tenant_id for a in disconnected}) == mine
    assert audit_rows(engine, "connections_listed", user_id=browser.user_id)


def test_reconnecting_keeps_one_row_per_tenant(make_browser, tenant_ids, engine):
    user = make_browser()
    assert user.connect([tenant_ids[2]]) == {"connected": ["1"]}
    assert user.connect([tenant_ids[2]]) == {"connected": ["1"]}
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM app.xero_connections WHERE tenant_id = :t"), {"t": tenant_ids[2]}
        ).scalar_one()
    assert n == 1
    assert len(audit_rows(engine, "xero_connected", user_id=user.user_id)) == 2


def _failed(engine, user_id: str | None, code: str) -> list:
    return [
        a
        for a in audit_rows(engine, "xero_callback_failed")
        if a.metadata.get("error") == code and (user_id is None or str(a.user_id) == user_id)
    ]


class TestState:
    def test_tampered_state(self, browser, tenant_ids, engine):
        init = browser.initiate()
        url = browser.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        tampered = url.replace(f"state={init['state']}", f"state={init['state'][:-2]}xx")
        assert browser.callback(tampered) == {"error": ["invalid_state"]}
        assert rows_for_user(engine, browser.user_id) == []
        assert _failed(engine, None, "invalid_state")

    def test_replayed_state(self, browser, tenant_ids, engine):
        init = browser.initiate()
        url = browser.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        assert browser.callback(url) == {"connected": ["1"]}
        assert browser.callback(url) == {"error": ["state_reused"]}
        assert len(rows_for_user(engine, browser.user_id)) == 1

    def test_expired_state(self, browser, tenant_ids, engine):
        init = browser.initiate()
        url = browser.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE app.oauth_states SET expires_at = now() - interval '1 second' "
                    "WHERE state_hash = :h"
                ),
                {"h": hashlib.sha256(init["state"].encode()).hexdigest()},
            )
        assert browser.callback(url) == {"error": ["state_expired"]}
        assert rows_for_user(engine, browser.user_id) == []
        assert _failed(engine, browser.user_id, "state_expired")

    def test_other_users_state(self, make_browser, tenant_ids, engine):
        """The attack the binding cookie stops: an attacker starts a connection (his own state, his own
        Xero organisation) and gets the victim's browser to open the callback URL, e.g. through a link.
        The victim is signed in and holds a binding cookie of her own; a browser arriving with no
        binding cookie at all is refused too. Nothing is stored, for either user."""
        attacker, victim = make_browser(), make_browser()
        init = attacker.initiate()
        url = attacker.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        victims_own = victim.initiate()  # her browser holds its own binding cookie (and pending state)
        assert victim.callback(url) == {"error": ["state_mismatch"]}
        [denied] = _failed(engine, attacker.user_id, "state_mismatch")
        assert denied.outcome == "denied"
        assert denied.metadata["detail"] == "state was issued to another browser"
        assert victim.callback(url) == {"error": ["state_reused"]}  # the attacker's state is spent

        init = attacker.initiate()
        url = attacker.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        bare = make_browser(victim.user_id)  # signed in as the victim, but no binding cookie
        assert bare.callback(url) == {"error": ["state_mismatch"]}
        assert rows_for_user(engine, attacker.user_id) == [] and rows_for_user(engine, victim.user_id) == []

        # her own flow, in her own browser, still works
        own = victim.authorize(victims_own["authorizationUrl"], sandbox_tenants=tenant_ids[3])
        assert victim.callback(own) == {"connected": ["1"]}
        assert [r.tenant_id for r in rows_for_user(engine, victim.user_id)] == [tenant_ids[3]]

    def test_missing_state_and_code(self, browser):
        assert browser.callback(f"{browser.service.url}/xero/auth/callback?code=abc") == {
            "error": ["missing_state"]
        }
        init = browser.initiate()
        assert browser.callback(f"{browser.service.url}/xero/auth/callback?state={init['state']}") == {
            "error": ["missing_code"]
        }

    def test_xero_access_denied(self, browser, engine):
        init = browser.initiate()
        url = browser.authorize(init["authorizationUrl"], sandbox_error="access_denied")
        assert "error=access_denied" in url
        assert browser.callback(url) == {"error": ["access_denied"]}
        assert rows_for_user(engine, browser.user_id) == []
        denied = _failed(engine, browser.user_id, "access_denied")
        assert denied and denied[-1].outcome == "denied"
        # the state was spent by the failed attempt
        assert browser.callback(url.replace("error=access_denied", "code=x")) == {"error": ["state_reused"]}

    def test_failed_code_exchange(self, browser, engine):
        init = browser.initiate()
        url = f"{browser.service.url}/xero/auth/callback?code=not-a-real-code&state={init['state']}"
        assert browser.callback(url) == {"error": ["token_exchange_failed"]}
        assert _failed(engine, browser.user_id, "token_exchange_failed")

    def test_initiate_answers_a_pkce_authorization_url(self, browser, settings):
        init = browser.initiate()
        url = httpx.URL(init["authorizationUrl"])
        assert str(url).startswith(settings.xero_authorize_url)
        params = dict(url.params)
        assert params["state"] == init["state"] and params["code_challenge_method"] == "S256"
        assert params["client_id"] == CLIENT_ID and params["response_type"] == "code"
        assert params["redirect_uri"] == settings.xero_redirect_uri
        assert set(params["scope"].split()) == set(settings.xero_scopes)
        assert len(init["state"]) >= 40


class TestCallerAuthentication:
    ENDPOINTS = (
        ("POST", "/xero/auth/initiate"),
        ("GET", "/xero/connections"),
        ("DELETE", "/xero/connections/some-tenant"),
    )

    def _tokens(self) -> dict[str, str | None]:
        uid = str(uuid.uuid4())
        now = int(time.time())
        return {
            "missing": None,
            "expired": user_jwt(uid, ttl=-120),
            "wrongly signed": user_jwt(uid, secret="another-secret-" + uuid.uuid4().hex),
            "wrong audience": user_jwt(uid, audience="anon"),
            "not a user id": user_jwt("service-role"),
            "no expiry": jwt.encode(
                {"sub": uid, "aud": "authenticated", "iat": now}, JWT_SECRET, algorithm="HS256"
            ),
            "alg none": jwt.encode(
                {"sub": uid, "aud": "authenticated", "exp": now + 60}, None, algorithm="none"
            ),
            "garbage": "not-a-jwt",
        }

    @pytest.mark.parametrize(
        "case",
        [
            "missing",
            "expired",
            "wrongly signed",
            "wrong audience",
            "not a user id",
            "no expiry",
            "alg none",
            "garbage",
        ],
    )
    def test_rejected(self, service, case):
        token = self._tokens()[case]
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        for method, path in self.ENDPOINTS:
            r = httpx.request(method, f"{service.url}{path}", headers=headers)
            assert r.status_code == 401, (case, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "detail" in r.json()

    def test_expired_message_is_clear(self, service):
        r = httpx.get(
            f"{service.url}/xero/connections",
            headers={"Authorization": f"Bearer {user_jwt(str(uuid.uuid4()), ttl=-120)}"},
        )
        assert r.json() == {"detail": "token expired"}

    def test_user_id_comes_from_the_token_only(self, browser, tenant_ids, engine):
        """A userId in the query or the body (as the first prototype took it) is ignored: the state,
        and so the connection, belong to the JWT's `sub`."""
        other = str(uuid.uuid4())
        r = browser.http.post(
            f"{browser.service.url}/xero/auth/initiate?userId={other}&user_id={other}",
            headers=browser.auth,
            json={"userId": other, "user_id": other, "sub": other},
        )
        assert r.status_code == 200
        init = r.json()
        with engine.connect() as conn:
            owner = conn.execute(
                text("SELECT user_id FROM app.oauth_states WHERE state_hash = :h"),
                {"h": hashlib.sha256(init["state"].encode()).hexdigest()},
            ).scalar_one()
        assert str(owner) == browser.user_id
        url = browser.authorize(init["authorizationUrl"], sandbox_tenants=tenant_ids[4])
        assert browser.callback(url) == {"connected": ["1"]}
        assert [str(r.user_id) for r in rows_for_user(engine, browser.user_id)] == [browser.user_id]
        assert rows_for_user(engine, other) == []

    def test_rejected_tokens_are_audited_within_the_anonymous_bound(self, service, engine):
        """Every rejected bearer token is accounted for in the audit log, one row each up to
        AUDIT_ANONYMOUS_PER_MINUTE per source IP and minute, then counted into a summary row."""
        source = "198.51.100.77"  # as a proxy in front of the service reports it
        bound = service.settings.anonymous_audit_per_minute
        expired = user_jwt(str(uuid.uuid4()), ttl=-120)
        for _ in range(bound * 3):
            r = httpx.get(
                f"{service.url}/xero/connections",
                headers={"Authorization": f"Bearer {expired}", "X-Forwarded-For": source},
            )
            assert r.status_code == 401
        service.app.state.anonymous_audit.flush()  # write the summary of this minute now
        rows = [a for a in audit_rows(engine, "auth_rejected") if str(a.ip_address) == source]
        individual = [a for a in rows if not a.metadata.get("aggregated")]
        assert 1 <= len(individual) <= bound * 2  # the burst may straddle a minute
        assert len(individual) + sum(a.metadata.get("suppressed", 0) for a in rows) == bound * 3
        first = individual[0]
        assert first.outcome == "denied" and first.user_id is None
        assert first.metadata["reason"] == "token expired"
        assert (first.metadata["method"], first.metadata["path"]) == ("GET", "/xero/connections")

    def test_initiate_from_a_peer_that_names_no_ip_address(self, browser, engine):
        """Behind a proxy the client address comes from X-Forwarded-For, which may hold anything."""
        r = browser.http.post(
            f"{browser.service.url}/xero/auth/initiate",
            headers={**browser.auth, "X-Forwarded-For": "not-an-ip-address"},
        )
        assert r.status_code == 200, r.text
        with engine.connect() as conn:
            ip = conn.execute(
                text("SELECT ip_address FROM app.oauth_states WHERE state_hash = :h"),
                {"h": hashlib.sha256(r.json()["state"].encode()).hexdigest()},
            ).scalar_one()
        assert ip is None
        assert audit_rows(engine, "xero_connect_initiated", user_id=browser.user_id)[-1].ip_address is None


def test_callback_as_a_bare_browser_redirect_needs_the_initiating_browsers_cookie(
    make_browser, sandbox, tenant_ids, engine
):
    """A state stolen or phished from the user's initiate, completed by another browser (no binding
    cookie, no Authorization header, as a plain redirect would arrive): rejected, nothing stored."""
    victim = make_browser()
    init = victim.initiate()
    assert "xero_oauth_browser" in victim.http.cookies  # initiate sets the HttpOnly binding cookie
    attacker = httpx.Client(timeout=30, follow_redirects=False)
    try:
        consent = attacker.get(init["authorizationUrl"] + f"&sandbox_tenants={tenant_ids[1]}")
        assert consent.status_code == 302
        r = attacker.get(consent.headers["location"])
        assert r.status_code == 302
        assert r.headers["location"].endswith("?error=state_mismatch")
    finally:
        attacker.close()
    assert rows_for_user(engine, victim.user_id) == []
    denied = [a for a in audit_rows(engine, "xero_callback_failed") if str(a.user_id) == victim.user_id]
    assert denied and denied[-1].outcome == "denied" and denied[-1].metadata["error"] == "state_mismatch"


def test_cors_only_for_the_web_app_origin(service):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(f"{service.url}/xero/auth/initiate", headers={"Origin": APP_ORIGIN, **pre})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    bad = httpx.options(
        f"{service.url}/xero/auth/initiate", headers={"Origin": "https://evil.example", **pre}
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers
    simple = httpx.get(f"{service.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_health_and_docs(service):
    r = httpx.get(f"{service.url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "demoMode": False}
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert {
        "/xero/auth/initiate",
        "/xero/auth/callback",
        "/xero/connections",
        "/xero/connections/{tenant_id}",
        "/xero/webhooks",
        "/healthz",
    } <= set(spec["paths"])
    assert set(spec["paths"]["/xero/connections/{tenant_id}"]) == {"delete"}
    docs = httpx.get(f"{service.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def _set_cookie(response: httpx.Response) -> tuple[str, str, set[str]]:
    """(name, value, lower-cased attributes) of the one Set-Cookie header of `response`."""
    [header] = response.headers.get_list("set-cookie")
    pair, *attributes = (part.strip() for part in header.split(";"))
    name, _, value = pair.partition("=")
    return name, value, {a.lower() for a in attributes}


def test_binding_cookie_over_https_survives_a_cross_site_fetch(make_browser, tenant_ids, engine):
    """The web app (another site) fetches initiate: browsers keep a cookie set by that cross-site
    response only when it is SameSite=None (hence Secure). Over https the cookie is
    `__Host-xero_oauth_browser; Secure; SameSite=None; Path=/` (no Domain), and the callback reads it."""
    https = {"X-Forwarded-Proto": "https"}  # from the TLS-terminating proxy (a trusted, loopback peer)
    user = make_browser()
    r = user.http.post(f"{user.service.url}/xero/auth/initiate", headers={**user.auth, **https})
    assert r.status_code == 200, r.text
    name, value, attributes = _set_cookie(r)
    assert name == "__Host-xero_oauth_browser" and len(value) >= 32
    assert {"secure", "httponly", "samesite=none", "path=/"} <= attributes
    assert not any(a.startswith("domain") for a in attributes)

    consent = user.http.get(r.json()["authorizationUrl"] + f"&sandbox_tenants={tenant_ids[5]}")
    callback_url = consent.headers["location"]
    # the same browser, over https: the secure cookie binds the state, and is cleared (still Secure)
    done = httpx.get(callback_url, headers={**https, "Cookie": f"{name}={value}"})
    assert done.status_code == 302 and done.headers["location"].endswith("?connected=1")
    cleared_name, _, cleared = _set_cookie(done)
    assert cleared_name == name and {"secure", "samesite=none", "path=/"} <= cleared
    assert [r.tenant_id for r in rows_for_user(engine, user.user_id)] == [tenant_ids[5]]

    # over https only the __Host- cookie counts: the plain name is no binding there
    init = user.http.post(f"{user.service.url}/xero/auth/initiate", headers={**user.auth, **https}).json()
    consent = user.http.get(init["authorizationUrl"] + f"&sandbox_tenants={tenant_ids[5]}")
    plain = httpx.get(consent.headers["location"], headers={**https, "Cookie": f"xero_oauth_browser={value}"})
    assert plain.headers["location"].endswith("?error=state_mismatch")


def test_binding_cookie_over_plain_http_loopback_is_lax(browser):
    r = browser.http.post(f"{browser.service.url}/xero/auth/initiate", headers=browser.auth)
    name, _, attributes = _set_cookie(r)
    assert name == "xero_oauth_browser"
    assert {"httponly", "samesite=lax", "path=/"} <= attributes and "secure" not in attributes


@contextmanager
def database_refuses_rows_of(engine, user_id: str) -> Iterator[None]:
    """While inside: the owner's temporary trigger refuses to insert or update this user's connection
    rows (the database failing to store them), other users' rows untouched."""
    guard = f"refuse_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE FUNCTION app.{guard}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.user_id = '{user_id}' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER {guard} BEFORE INSERT OR UPDATE ON app.xero_connections "
                f"FOR EACH ROW EXECUTE FUNCTION app.{guard}()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER {guard} ON app.xero_connections"))
            conn.execute(text(f"DROP FUNCTION app.{guard}()"))


def test_a_failure_to_store_the_connections_is_audited_and_the_new_grant_revoked(
    make_browser, sandbox, tenant_ids, engine
):
    """After the code exchange the database refuses the connection rows: the browser still gets
    APP_RETURN_URL?error=store_failed (not a 500), the failure is audited, and the tokens nobody will
    keep are revoked at Xero (which drops the authorisation's connection: a first connection, and of
    another Xero user than any we hold, so no connection of ours)."""
    user = make_browser()
    with database_refuses_rows_of(engine, user.user_id):
        before = xero_connection_ids(sandbox)
        init = user.initiate()
        url = user.authorize(
            init["authorizationUrl"], sandbox_tenants=tenant_ids[1], sandbox_user=SECOND_XERO_USER
        )
        made = xero_connection_ids(sandbox) - before
        assert len(made) == 1  # Xero made the connection when the user consented
        assert user.callback(url) == {"error": ["store_failed"]}
    assert rows_for_user(engine, user.user_id) == []
    [failed] = _failed(engine, user.user_id, "store_failed")
    assert failed.outcome == "failure" and failed.metadata["revoked"] is True
    assert "refused by the test" not in str(failed.metadata)  # the exception's type only, never its text
    assert made.isdisjoint(xero_connection_ids(sandbox))  # revoked: Xero dropped the connection


def _still_works(sandbox, engine, vault, tenant: str, connection_id: str) -> None:
    """The tenant's stored grant still reads the API, before and after a refresh, and Xero still
    lists its connection."""
    assert connection_id in xero_connection_ids(sandbox)
    token = vault.access_token_for(tenant)
    SEEN_TOKENS.add(token)
    assert api_get(sandbox, token, tenant).status_code == 200
    expire_in_db(engine, tenant)
    refreshed = vault.access_token_for(tenant)
    SEEN_TOKENS.add(refreshed)
    assert refreshed != token and api_get(sandbox, refreshed, tenant).status_code == 200
    row = row_of_tenant(engine, tenant)
    assert row.status == "active" and row.xero_connection_id == connection_id


def row_of_tenant(engine, tenant_id: str):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM app.xero_connections WHERE tenant_id = :t"), {"t": tenant_id}
        ).one()


def test_a_failed_reconnect_leaves_the_working_connection_alone(
    make_browser, sandbox, tenant_ids, engine, vault
):
    """On a reconnect Xero moves the tenant's existing connection onto the new authorisation. When
    storing it then fails, revoking that authorisation would delete the connection our `active` row
    still uses: it is kept, and the audit row says why."""
    tenant = tenant_ids[4]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    row = row_of_tenant(engine, tenant)
    with database_refuses_rows_of(engine, user.user_id):
        assert user.connect([tenant]) == {"error": ["store_failed"]}
    assert row_of_tenant(engine, tenant).grant_id == row.grant_id  # nothing stored
    _still_works(sandbox, engine, vault, tenant, row.xero_connection_id)
    [failed] = _failed(engine, user.user_id, "store_failed")
    assert failed.metadata["revoked"] is False
    assert failed.metadata["not_revoked"] == "tenants_in_use"
    assert failed.metadata["tenants_in_use"] == [tenant]


def test_a_reconnect_whose_connections_cannot_be_read_revokes_nothing(
    make_browser, settings, sandbox, tenant_ids, engine, vault
):
    """/connections fails after the code exchange: which connections the new authorisation holds is
    unknown, so it is not revoked (it may hold the tenant's working connection); audited as such."""
    tenant = tenant_ids[4]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    row = row_of_tenant(engine, tenant)
    nowhere = f"http://127.0.0.1:{free_port()}/connections"  # nothing listens there: connection refused
    broken = settings.replace(xero_redirect_uri=None, xero_connections_url=nowhere)
    with ServiceServer(broken, port=free_port()) as srv:
        same_user = Browser(srv, user.user_id)
        try:
            assert same_user.connect([tenant]) == {"error": ["connections_failed"]}
        finally:
            same_user.close()
    _still_works(sandbox, engine, vault, tenant, row.xero_connection_id)
    [failed] = _failed(engine, user.user_id, "connections_failed")
    assert failed.metadata["revoked"] is False and failed.metadata["not_revoked"] == "connections_unknown"
