"""Disconnect keeps our state in step with Xero's, whatever fails on the way.

- the refresh before the DELETE is committed on its own (the rotated refresh token is never lost);
- a failed DELETE /connections changes nothing here and answers 502 with a clear body;
- once Xero deleted the connection, the tenant is `disconnected` (tokens dropped) even when the
  revocation fails; that failure is audited.
Failures are real HTTP failures: an identity endpoint nobody listens on, or the sandbox refusing a
wrong client secret.
"""

import pytest
from oauth_testlib import Browser, audit_rows, expire_in_db, free_port, stored_tokens, xero_connection_ids
from sqlalchemy import text

from oauth_service.server import ServiceServer


def _dead_url(path: str) -> str:
    return f"http://127.0.0.1:{free_port()}{path}"  # nothing listens there: connection refused


@pytest.fixture(scope="module")
def broken_service(settings):
    """Start a second service on the same database with one thing broken."""
    started: list[ServiceServer] = []

    def start(**changes) -> ServiceServer:
        srv = ServiceServer(settings.replace(xero_redirect_uri=None, **changes), port=free_port()).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def row_of(engine, tenant_id: str):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT status, access_token, refresh_token, xero_connection_id FROM app.xero_connections "
                "WHERE tenant_id = :t"
            ),
            {"t": tenant_id},
        ).one()


def delete(browser: Browser, service, tenant_id: str):
    return browser.http.delete(f"{service.url}/xero/connections/{tenant_id}", headers=browser.auth)


def test_revocation_failure_after_xero_deleted_the_connection_still_disconnects(
    make_browser, sandbox, tenant_ids, engine, vault, broken_service
):
    tenant = tenant_ids[6]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    connection_id = row_of(engine, tenant).xero_connection_id
    assert connection_id in xero_connection_ids(sandbox)
    _, refresh_before = stored_tokens(engine, vault.cipher, tenant)
    expire_in_db(engine, tenant)  # the disconnect has to refresh first
    refreshed_before = len(audit_rows(engine, "token_refreshed", tenant_id=tenant))

    srv = broken_service(xero_revocation_url=_dead_url("/connect/revocation"))
    r = delete(Browser(srv, user.user_id), srv, tenant)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenantId": tenant,
        "status": "disconnected",
        "xeroConnectionDeleted": True,
        "revokedAtXero": False,
    }
    # Xero's side changed, and so did ours: no token kept for a connection that no longer exists
    assert connection_id not in xero_connection_ids(sandbox)
    row = row_of(engine, tenant)
    assert (row.status, row.access_token, row.refresh_token) == ("disconnected", None, None)
    assert len(audit_rows(engine, "token_refreshed", tenant_id=tenant)) == refreshed_before + 1
    failed = audit_rows(engine, "token_revoke_failed", tenant_id=tenant)
    assert len(failed) == 1 and failed[0].outcome == "failure" and str(failed[0].user_id) == user.user_id
    done = audit_rows(engine, "xero_disconnected", tenant_id=tenant)
    assert done[-1].outcome == "success" and done[-1].metadata["revoked"] is False
    assert done[-1].metadata["xero_connection_deleted"] is True
    assert refresh_before  # (seen by the secrets test)


def test_failed_xero_delete_changes_nothing_but_keeps_the_refreshed_token(
    make_browser, sandbox, tenant_ids, engine, vault, broken_service
):
    tenant = tenant_ids[7]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    connection_id = row_of(engine, tenant).xero_connection_id
    _, refresh_before = stored_tokens(engine, vault.cipher, tenant)
    expire_in_db(engine, tenant)

    srv = broken_service(xero_connections_url=_dead_url("/connections"))
    r = delete(Browser(srv, user.user_id), srv, tenant)
    assert r.status_code == 502
    body = r.json()
    assert body["status"] == "unchanged" and body["tenantId"] == tenant
    assert "not disconnected" in body["detail"] and "try again" in body["detail"].lower()

    # nothing changed at Xero nor here, except the refresh, which was committed: the rotated refresh
    # token is stored (Xero has already invalidated the old one)
    assert connection_id in xero_connection_ids(sandbox)
    assert row_of(engine, tenant).status == "active"
    access_after, refresh_after = stored_tokens(engine, vault.cipher, tenant)
    assert refresh_after != refresh_before
    failed = audit_rows(engine, "xero_disconnected", tenant_id=tenant)
    assert failed[-1].outcome == "failure"
    # the stored token works, without another refresh, and the user can disconnect normally
    assert vault.access_token_for(tenant) == access_after
    r = delete(user, user.service, tenant)
    assert r.status_code == 200 and r.json()["revokedAtXero"] is True
    assert connection_id not in xero_connection_ids(sandbox)


def test_refresh_failure_before_disconnect_is_a_502_and_changes_nothing(
    make_browser, sandbox, tenant_ids, engine, broken_service
):
    tenant = tenant_ids[4]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    connection_id = row_of(engine, tenant).xero_connection_id
    expire_in_db(engine, tenant)
    before = row_of(engine, tenant)

    srv = broken_service(xero_client_secret="not-the-secret")  # the sandbox answers invalid_client
    r = delete(Browser(srv, user.user_id), srv, tenant)
    assert r.status_code == 502
    assert "XERO_CLIENT_ID" in r.json()["detail"] and r.json()["status"] == "unchanged"
    assert row_of(engine, tenant) == before  # still active, same tokens: not reauth_required
    assert connection_id in xero_connection_ids(sandbox)
    assert audit_rows(engine, "token_refresh_failed", tenant_id=tenant)[-1].metadata["configuration_error"]
    r = delete(user, user.service, tenant)
    assert r.status_code == 200 and r.json()["xeroConnectionDeleted"] is True
