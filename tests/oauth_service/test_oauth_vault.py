"""The token vault against the sandbox: one refresh for many processes, reauth, Xero-side removal."""

import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from oauth_testlib import (
    CLIENT_ID,
    CLIENT_SECRET,
    LOG_SINK,
    SEEN_TOKENS,
    api_get,
    audit_rows,
    expire_in_db,
    free_port,
    refresh_worker,
    sandbox_admin,
    stored_tokens,
)
from sqlalchemy import text

from oauth_service import migrations
from oauth_service.crypto import DecryptionError, TokenCipher
from oauth_service.db import make_engine
from oauth_service.settings import Settings, generate_key
from oauth_service.vault import (
    ClientConfigurationError,
    ReauthRequired,
    TenantNotConnected,
    TokenRefreshError,
    TokenVault,
    reencrypt_all,
)
from oauth_service.xero import TokenSet

PROCESSES = 20


def status_of(engine, tenant_id: str):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, status_reason FROM app.xero_connections WHERE tenant_id = :t"),
            {"t": tenant_id},
        ).one()


def test_twenty_processes_cause_exactly_one_refresh(
    make_browser, sandbox, tenant_ids, engine, vault, service_env, tmp_path: Path
):
    tenant = tenant_ids[4]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    old_access, old_refresh = stored_tokens(engine, vault.cipher, tenant)
    assert api_get(sandbox, old_access, tenant).status_code == 200

    # 30 minutes pass: Xero's access tokens expire, and our record says so too
    sandbox_admin(sandbox, "POST", "tokens/expire")
    expire_in_db(engine, tenant)
    assert api_get(sandbox, old_access, tenant).status_code == 401
    issued_before = sandbox_admin(sandbox, "GET", "identity").json()["access_tokens"]
    refreshes_before = len(audit_rows(engine, "token_refreshed", tenant_id=tenant))

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    logs = [tmp_path / f"worker-{i}.log" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=refresh_worker, args=(service_env, tenant, barrier, queue, str(log)))
        for log in logs
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    for log in logs:  # the workers' own logs join the captured ones
        if log.exists():
            LOG_SINK.lines.extend(log.read_text().splitlines())

    assert [kind for kind, _ in results] == ["ok"] * PROCESSES, results
    tokens = {token for _, token in results}
    SEEN_TOKENS.update(tokens)
    assert len(tokens) == 1  # every process got the same, refreshed token
    token = tokens.pop()
    assert token != old_access

    # exactly one refresh reached the sandbox: it issued exactly one new access token
    issued_after = sandbox_admin(sandbox, "GET", "identity").json()["access_tokens"]
    assert issued_after - issued_before == 1
    assert len(audit_rows(engine, "token_refreshed", tenant_id=tenant)) - refreshes_before == 1
    # the token works, and the rotated refresh token was stored with it
    assert api_get(sandbox, token, tenant).status_code == 200
    new_access, new_refresh = stored_tokens(engine, vault.cipher, tenant)
    assert new_access == token and new_refresh != old_refresh
    reads = [
        a
        for a in audit_rows(engine, "token_read", tenant_id=tenant)
        if a.metadata.get("actor", "").startswith("worker-")
    ]
    assert len(reads) == PROCESSES


def test_revoked_refresh_token_means_reauth_and_other_tenants_are_unaffected(
    make_browser, sandbox, tenant_ids, engine, vault, service
):
    victim_tenant, other_tenant = tenant_ids[5], tenant_ids[6]
    user = make_browser()
    assert user.connect([victim_tenant]) == {"connected": ["1"]}
    assert user.connect([other_tenant]) == {"connected": ["1"]}  # a second, separate authorisation
    _, refresh = stored_tokens(engine, vault.cipher, victim_tenant)
    # the user revoked the app in Xero (or the refresh token was otherwise invalidated)
    r = httpx.post(
        f"{sandbox.url}/connect/revocation",
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"token": refresh, "token_type_hint": "refresh_token"},
    )
    assert r.status_code == 200
    expire_in_db(engine, victim_tenant)
    expire_in_db(engine, other_tenant)

    with pytest.raises(ReauthRequired) as err:
        vault.access_token_for(victim_tenant)
    message = str(err.value)
    assert victim_tenant in message and "connect the organisation again" in message
    assert err.value.tenant_id == victim_tenant
    row = status_of(engine, victim_tenant)
    assert row.status == "reauth_required" and "invalid_grant" in row.status_reason
    failed = audit_rows(engine, "token_refresh_failed", tenant_id=victim_tenant)
    assert len(failed) == 1 and failed[0].outcome == "failure" and str(failed[0].user_id) == user.user_id
    assert failed[0].metadata["error"] == "invalid_grant"
    # asking again does not call Xero again, and still says what to do
    with pytest.raises(ReauthRequired, match="connect the organisation again"):
        vault.access_token_for(victim_tenant)
    assert len(audit_rows(engine, "token_refresh_failed", tenant_id=victim_tenant)) == 1

    # the other tenant refreshes and works
    token = vault.access_token_for(other_tenant)
    SEEN_TOKENS.add(token)
    assert api_get(sandbox, token, other_tenant).status_code == 200
    active = {t.tenant_id for t in vault.active_tenants()}
    assert other_tenant in active and victim_tenant not in active
    listed = {c["tenantId"]: c for c in user.connections()}
    assert listed[victim_tenant]["status"] == "reauth_required"
    assert listed[other_tenant]["status"] == "active"

    # reconnecting in the app repairs it
    assert user.connect([victim_tenant]) == {"connected": ["1"]}
    token = vault.access_token_for(victim_tenant)
    SEEN_TOKENS.add(token)
    assert api_get(sandbox, token, victim_tenant).status_code == 200


def test_disconnect_made_from_xeros_side_is_detected(make_browser, sandbox, tenant_ids, engine, vault):
    removed, kept = tenant_ids[7], tenant_ids[2]
    user = make_browser()
    assert user.connect([removed, kept]) == {"connected": ["2"]}
    sandbox_admin(sandbox, "POST", f"tenants/{removed}/disconnect")
    expire_in_db(engine, removed)
    expire_in_db(engine, kept)
    with pytest.raises(ReauthRequired, match="removed in Xero"):
        vault.access_token_for(removed)
    assert status_of(engine, removed).status == "reauth_required"
    assert audit_rows(engine, "connection_removed_in_xero", tenant_id=removed)
    token = vault.access_token_for(kept)  # same grant, refreshed once already: no second refresh needed
    SEEN_TOKENS.add(token)
    assert api_get(sandbox, token, kept).status_code == 200


def test_unknown_tenant_mark_synced_and_active_tenants(make_browser, tenant_ids, engine, vault):
    with pytest.raises(TenantNotConnected, match="not connected"):
        vault.access_token_for(str(uuid.uuid4()))
    with pytest.raises(TenantNotConnected):
        vault.mark_synced(str(uuid.uuid4()))
    tenant = tenant_ids[1]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    when = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
    vault.mark_synced(tenant, when)
    listed = {c["tenantId"]: c for c in user.connections()}
    assert listed[tenant]["lastSync"].startswith("2026-05-20T12:00:00")
    info = next(t for t in vault.active_tenants() if t.tenant_id == tenant)
    tenant_id, name, user_id, status = info
    assert (tenant_id, user_id, status) == (tenant, user.user_id, "active") and name


def test_reencrypt_all_under_the_newest_key(create_database):
    url = create_database("rotation")
    migrations.upgrade(url)
    engine = make_engine(url, pool_size=2)
    old, new = generate_key(), generate_key()
    settings = Settings(database_url=url, token_encryption_keys=(old,), auth_jwt_secret="x" * 40)
    try:
        vault = TokenVault(settings, engine)
        tokens = TokenSet("access-" + uuid.uuid4().hex, "refresh-" + uuid.uuid4().hex, time.time() + 1800)
        with engine.begin() as conn:
            vault.store_authorization(
                conn,
                user_id=str(uuid.uuid4()),
                tokens=tokens,
                tenants=[{"tenantId": "tenant-a", "tenantName": "A"}, {"tenantId": "tenant-b"}],
            )
        assert reencrypt_all(engine, [new, old]) == 4
        assert reencrypt_all(engine, f"{new},{old}") == 0
        only_new = TokenVault(settings.replace(token_encryption_keys=(new,)), engine)
        assert only_new.access_token_for("tenant-a") == tokens.access_token
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT access_token, refresh_token FROM app.xero_connections")).all()
        assert all(only_new.cipher.is_current(v) for row in stored for v in row)
        assert audit_rows(engine, "tokens_reencrypted")
    finally:
        engine.dispose()


def test_wrong_client_secret_is_a_configuration_error_and_changes_no_connection(
    make_browser, sandbox, tenant_ids, engine, vault, settings
):
    """invalid_client/unauthorized_client say *our app* is misconfigured, not that the user's grant is
    dead: nothing is marked reauth_required, the failure is audited, and the message says what to fix."""
    tenant = tenant_ids[3]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    expire_in_db(engine, tenant)
    columns = "status, status_reason, access_token, refresh_token, token_expires_at, updated_at"
    query = text(f"SELECT {columns} FROM app.xero_connections WHERE tenant_id = :t")  # noqa: S608
    with engine.connect() as conn:
        before = conn.execute(query, {"t": tenant}).one()
    failures_before = len(audit_rows(engine, "token_refresh_failed", tenant_id=tenant))

    misconfigured = TokenVault(
        settings.replace(xero_client_secret="wrong-" + uuid.uuid4().hex), engine, actor="tests", cache=False
    )
    for _ in range(2):  # and again: still not reauth
        with pytest.raises(TokenRefreshError) as err:
            misconfigured.access_token_for(tenant)
        assert not isinstance(err.value, ReauthRequired)
        assert "XERO_CLIENT_ID" in str(err.value) and "XERO_CLIENT_SECRET" in str(err.value)
        assert "invalid_client" in str(err.value) and err.value.tenant_id == tenant
    with engine.connect() as conn:
        assert conn.execute(query, {"t": tenant}).one() == before
    assert before.status == "active"
    failed = audit_rows(engine, "token_refresh_failed", tenant_id=tenant)[failures_before:]
    assert len(failed) == 2
    assert all(a.outcome == "failure" and a.metadata["error"] == "invalid_client" for a in failed)
    assert all(a.metadata.get("configuration_error") is True for a in failed)
    assert all("new_status" not in a.metadata for a in failed)

    # with the right credentials the same grant refreshes and works
    token = vault.access_token_for(tenant)
    SEEN_TOKENS.add(token)
    assert api_get(sandbox, token, tenant).status_code == 200
    assert status_of(engine, tenant).status == "active"


def test_odd_connection_fields_from_xero_are_fitted_to_the_columns(create_database):
    """Xero's /connections answer is stored as far as it fits: descriptive text is cut, identifiers that
    do not fit are dropped (a cut id would name another connection), unusable tenants are skipped."""
    url = create_database("odd")
    migrations.upgrade(url)
    engine = make_engine(url, pool_size=1)
    settings = Settings(database_url=url, token_encryption_keys=(generate_key(),), auth_jwt_secret="x" * 40)
    tenant = str(uuid.uuid4())
    odd = {
        "tenantId": tenant,
        "tenantType": "ORGANISATION" * 4,
        "tenantName": "N" * 300 + "\x00",
        "id": "c" * 100,
        "authEventId": "e" * 65,
    }
    try:
        vault = TokenVault(settings, engine)
        tokens = TokenSet("access-" + uuid.uuid4().hex, "refresh-" + uuid.uuid4().hex, time.time() + 1800)
        with engine.begin() as conn:
            stored = vault.store_authorization(
                conn,
                user_id=str(uuid.uuid4()),
                tokens=tokens,
                tenants=[odd, {"tenantId": 12345}, {"tenantId": "t" * 256}, {"tenantName": "no id"}],
            )
        assert stored == [tenant]
        with engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM app.xero_connections")).one()
        assert row.tenant_id == tenant and row.tenant_type == ("ORGANISATION" * 4)[:32]
        assert row.tenant_name == "N" * 255
        assert row.xero_connection_id is None and row.auth_event_id is None
        assert vault.access_token_for(tenant) == tokens.access_token
    finally:
        engine.dispose()


def test_a_failed_refresh_is_audited_on_the_connection_holding_the_lock(
    make_browser, tenant_ids, engine, settings, app_database_url
):
    """A vault whose pool has one connection (nothing to spare while the grant is locked): a failed
    refresh still raises the vault's own error, never a pool timeout, and is audited."""
    tenant = tenant_ids[0]
    user = make_browser()
    assert user.connect([tenant]) == {"connected": ["1"]}
    expire_in_db(engine, tenant)
    one = make_engine(app_database_url, pool_size=1, max_overflow=0, pool_timeout=3)
    actor = f"one-connection-{uuid.uuid4().hex[:6]}"
    dead_token_url = f"http://127.0.0.1:{free_port()}/connect/token"  # nothing listens there
    try:
        for changes, error in (
            ({"xero_client_secret": "wrong-" + uuid.uuid4().hex}, ClientConfigurationError),
            ({"xero_token_url": dead_token_url}, TokenRefreshError),
        ):
            vault = TokenVault(settings.replace(**changes), one, actor=actor, cache=False)
            with pytest.raises(error):
                vault.access_token_for(tenant)
    finally:
        one.dispose()
    failed = audit_rows(engine, "token_refresh_failed", tenant_id=tenant)
    failed = [a for a in failed if a.metadata["actor"] == actor]
    assert [(a.metadata.get("configuration_error"), a.metadata.get("transient")) for a in failed] == [
        (True, None),
        (None, True),
    ]
    assert status_of(engine, tenant).status == "active"


def _blocked_behind(engine, pid: int) -> bool:
    """True when some session waits for a lock held by session `pid`."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid))")
    with engine.connect() as conn:  # a new transaction: pg_stat_activity is a per-transaction snapshot
        return bool(conn.execute(query, {"p": pid}).scalar_one())


def test_a_reconnect_locks_rows_in_the_order_a_refresh_does(make_browser, tenant_ids, engine, vault):
    """A refresh locks its grant's rows in id order; a reconnect naming the same tenants in Xero's
    order must lock them in id order too, else each can hold the row the other waits for (deadlock).
    Here the first row (by id) is held: the reconnect must wait for it before locking the second."""
    user = make_browser()
    assert user.connect(tenant_ids[1:3]) == {"connected": ["2"]}
    with engine.connect() as conn:
        first, second = conn.execute(
            text("SELECT tenant_id FROM app.xero_connections WHERE tenant_id = ANY(:t) ORDER BY id"),
            {"t": tenant_ids[1:3]},
        ).scalars()
    access, refresh = stored_tokens(engine, vault.cipher, first)
    tokens = TokenSet(access, refresh, time.time() + 1800)
    outcome: list = []

    def reconnect() -> None:
        try:
            xero_order = [{"tenantId": second}, {"tenantId": first}]
            with engine.begin() as conn:
                outcome.append(
                    vault.store_authorization(conn, user_id=user.user_id, tokens=tokens, tenants=xero_order)
                )
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    holder = engine.connect()
    probe = engine.connect()
    thread = threading.Thread(target=reconnect)
    try:
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        holder.execute(
            text("SELECT 1 FROM app.xero_connections WHERE tenant_id = :t FOR UPDATE"), {"t": first}
        )
        thread.start()
        deadline = time.monotonic() + 20
        while not _blocked_behind(engine, holder_pid):
            assert time.monotonic() < deadline, f"the reconnect never waited for the first row: {outcome}"
            time.sleep(0.05)
        # the reconnect waits for the first row and has not locked the second one
        probe.execute(
            text("SELECT 1 FROM app.xero_connections WHERE tenant_id = :t FOR UPDATE NOWAIT"), {"t": second}
        )
        probe.rollback()
    finally:
        probe.close()
        holder.rollback()
        holder.close()
        thread.join(timeout=30)
    assert outcome == [sorted([first, second])]


def _encrypted_values(engine) -> list[str]:
    with engine.connect() as conn:
        tokens = conn.execute(text("SELECT access_token, refresh_token FROM app.xero_connections")).all()
        verifiers = conn.execute(text("SELECT code_verifier FROM app.oauth_states")).scalars().all()
    return [v for row in tokens for v in row if v] + list(verifiers)


def test_the_reencrypt_command_moves_every_value_to_the_newest_key(create_database):
    """`python -m oauth_service reencrypt` as an operator runs it, on a real database: afterwards every
    token and pending PKCE verifier decrypts with the newest key alone, and the old key is useless."""
    url = create_database("reencrypt")
    migrations.upgrade(url)
    engine = make_engine(url, pool_size=1)
    old, new = generate_key(), generate_key()
    settings = Settings(database_url=url, token_encryption_keys=(old,), auth_jwt_secret="x" * 40)
    tokens = TokenSet("access-" + uuid.uuid4().hex, "refresh-" + uuid.uuid4().hex, time.time() + 1800)
    verifier = "verifier-" + uuid.uuid4().hex
    try:
        vault = TokenVault(settings, engine)
        with engine.begin() as conn:
            vault.store_authorization(
                conn, user_id=str(uuid.uuid4()), tokens=tokens, tenants=[{"tenantId": "a"}, {"tenantId": "b"}]
            )
            conn.execute(
                text(
                    "INSERT INTO app.oauth_states (state_hash, user_id, code_verifier, expires_at) "
                    "VALUES (:h, :u, :v, now() + interval '10 minutes')"
                ),
                {
                    "h": hashlib.sha256(b"state").hexdigest(),
                    "u": str(uuid.uuid4()),
                    "v": vault.cipher.encrypt(verifier),
                },
            )
        expected = sorted([tokens.access_token, tokens.refresh_token] * 2 + [verifier])
        clean = {k: v for k, v in os.environ.items() if k not in ("APP_DATABASE_URL", "DEMO_MODE")}

        def reencrypt(keys: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "oauth_service", "reencrypt"],
                env={**clean, "DATABASE_URL": url, "TOKEN_ENCRYPTION_KEY": keys},
                capture_output=True,
                text=True,
                timeout=120,
            )

        # a key list that lost the old key: refused, nothing rewritten
        lost = reencrypt(generate_key())
        assert lost.returncode == 2 and "cannot be decrypted" in lost.stderr
        assert sorted(TokenCipher([old]).decrypt(v) for v in _encrypted_values(engine)) == expected

        done = reencrypt(f"{new},{old}")
        assert done.returncode == 0, done.stderr
        assert "re-encrypted 5 value(s) under the newest key" in done.stdout
        values = _encrypted_values(engine)
        assert sorted(TokenCipher([new]).decrypt(v) for v in values) == expected
        for value in values:
            with pytest.raises(DecryptionError):
                TokenCipher([old]).decrypt(value)
        again = reencrypt(f"{new},{old}")
        assert again.returncode == 0 and "re-encrypted 0 value(s)" in again.stdout
        assert audit_rows(engine, "tokens_reencrypted")[-1].metadata["values_rewritten"] == 0
    finally:
        engine.dispose()


def test_a_token_read_before_another_thread_reported_it_refused_is_not_cached_after(
    make_browser, sandbox, tenant_ids, engine, settings, monkeypatch
):
    """A tenant's resources extract in threads that share one vault. One thread reads the token
    from the database while another reports that same token refused by Xero (401). Cached by the
    reader after the report, the refused token would be handed out again, refused again, and the
    sync would end as if the connection were dead."""
    tenant = tenant_ids[4]
    assert make_browser().connect([tenant]) == {"connected": ["1"]}
    vault = TokenVault(settings, engine, actor="tests", cache=True)  # as the sync's vault: cached
    refused = vault.access_token_for(tenant)
    vault.forget(tenant)  # so the reader goes to the database

    read, reported = threading.Event(), threading.Event()
    decrypt = vault.cipher.decrypt

    def reader_pauses_after_reading(value: str) -> str:
        plain = decrypt(value)
        if threading.current_thread().name == "reader":
            read.set()
            assert reported.wait(30)
        return plain

    monkeypatch.setattr(vault.cipher, "decrypt", reader_pauses_after_reading)
    got: dict[str, str] = {}
    reader = threading.Thread(target=lambda: got.update(token=vault.access_token_for(tenant)), name="reader")
    reader.start()
    assert read.wait(30)
    vault.access_token_rejected(tenant, refused)  # another thread: Xero answered 401 to it
    reported.set()
    reader.join(30)
    # What the reader read (its own request meets the 401 and asks again). Compared, not shown:
    # a failure's message holds no token.
    got_what_it_read = got["token"] == refused
    assert got_what_it_read, "the reader did not get the token it read"

    renewed = vault.access_token_for(tenant)
    handed_out_again = renewed == refused
    assert not handed_out_again, "the refused token was handed out again"
    assert api_get(sandbox, renewed, tenant).status_code == 200


def test_a_token_read_while_another_thread_reports_it_refused_is_not_handed_out_again(
    make_browser, sandbox, tenant_ids, engine, settings, monkeypatch
):
    """The other order: a thread reads the token from the database after the report has dropped
    the cache but before it has committed the token's expiry; it sees the token still valid and
    caches it. The report drops the cache again once committed (seen in the suite: a sync's
    resources met 401, asked again, got the same refused token, and the run failed)."""
    tenant = tenant_ids[5]
    assert make_browser().connect([tenant]) == {"connected": ["1"]}
    vault = TokenVault(settings, engine, actor="tests", cache=True)  # as the sync's vault: cached
    refused = vault.access_token_for(tenant)
    lock_grant, read = vault._lock_grant, {}

    def another_thread_reads_first(conn, tenant_id):
        if not read:  # the report's own lock, after its first forget and before its update
            reader = threading.Thread(target=lambda: read.update(token=vault.access_token_for(tenant)))
            reader.start()
            reader.join(30)
        return lock_grant(conn, tenant_id)

    monkeypatch.setattr(vault, "_lock_grant", another_thread_reads_first)
    vault.access_token_rejected(tenant, refused)  # a thread: Xero answered 401 to it
    # Compared, not shown: a failure's message holds no token.
    saw_it_valid = read["token"] == refused
    assert saw_it_valid, "the reader did not read the refused token as still valid"

    renewed = vault.access_token_for(tenant)
    handed_out_again = renewed == refused
    assert not handed_out_again, "the refused token was handed out again"
    assert api_get(sandbox, renewed, tenant).status_code == 200
