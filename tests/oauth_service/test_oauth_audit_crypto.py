"""Audit writer (append-only, never a secret) and token encryption with key rotation."""

import uuid

import pytest
from oauth_testlib import audit_rows
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from oauth_service.audit import REDACTED, record_audit, sanitize
from oauth_service.crypto import DecryptionError, TokenCipher
from oauth_service.db import make_engine
from oauth_service.settings import generate_key


@pytest.fixture(scope="module")
def engine(migrated_database_url):
    eng = make_engine(migrated_database_url, pool_size=2)
    yield eng
    eng.dispose()


def test_sanitize_strips_tokens_and_secrets():
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    opaque = "Zx8kP2mQ9vR4tY7wB1nC5dF3gH6jK0lL"
    meta = {
        "access_token": "abc",
        "refresh_token": "def",
        "client_secret": "ghi",
        "Authorization": "Bearer x",
        "nested": {"password": "p", "note": f"token was {jwt_like}", "list": [opaque, "plain words here"]},
        "tenant": str(uuid.uuid4()),
        "count": 3,
        "run_id": "8f14e45f-ceea-467f-a0e5-1c0f2e6b1d7a",
        "header": "Bearer abcdef",
    }
    out = sanitize(meta)
    for key in ("access_token", "refresh_token", "client_secret", "Authorization", "header"):
        assert out[key] == REDACTED
    assert out["nested"]["password"] == REDACTED
    assert out["nested"]["note"] == REDACTED
    assert out["nested"]["list"] == [REDACTED, "plain words here"]
    assert out["tenant"] == meta["tenant"] and out["count"] == 3 and out["run_id"] == meta["run_id"]


def test_record_audit_writes_a_row_without_secrets(engine):
    user = uuid.uuid4()
    row_id = record_audit(
        engine,
        "sync_run_started",
        user_id=user,
        tenant_id="t-1",
        ip_address="10.1.2.3",
        table_accessed="dagster_runs",
        record_id="run-1",
        metadata={"run_id": "run-1", "refresh_token": "very-secret-value"},
    )
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM app.audit_log WHERE id = :i"), {"i": row_id}).one()
    assert row.user_id == user and row.action == "sync_run_started" and row.tenant_id == "t-1"
    assert str(row.ip_address) == "10.1.2.3" and row.outcome == "success"
    assert row.metadata == {"run_id": "run-1", "refresh_token": REDACTED}
    # a process, not a user: kept as the actor
    row_id = record_audit(
        engine, "sync_run_failed", user_id="dagster", outcome="failure", ip_address="nonsense"
    )
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM app.audit_log WHERE id = :i"), {"i": row_id}).one()
    assert row.user_id is None and row.metadata["actor"] == "dagster" and row.ip_address is None
    with pytest.raises(ValueError, match="outcome"):
        record_audit(engine, "x", outcome="maybe")


@pytest.mark.parametrize(
    "statement",
    ["UPDATE app.audit_log SET action = 'tampered'", "DELETE FROM app.audit_log", "TRUNCATE app.audit_log"],
)
def test_audit_log_is_append_only_in_the_database(engine, statement):
    record_audit(engine, "something_happened")
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app.audit_log")).scalar_one() >= 1


def test_application_role_may_not_change_nor_read_audit_rows(engine):
    with engine.connect() as conn:
        # The tests migrate as a login that may create roles, so the role must exist: without it
        # the service refuses to start, and this check must not go quietly green.
        assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = 'xero_elt_app'")).first()
        privileges = {
            p: conn.execute(
                text("SELECT has_table_privilege('xero_elt_app', 'app.audit_log', :p)"), {"p": p}
            ).scalar_one()
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
        readable = {
            c: conn.execute(
                text("SELECT has_column_privilege('xero_elt_app', 'app.audit_log', :c, 'SELECT')"), {"c": c}
            ).scalar_one()
            for c in ("id", "action", "record_id", "user_id", "tenant_id", "metadata", "ip_address")
        }
    assert {p for p, ok in privileges.items() if ok} == {"INSERT"}
    assert {c for c, ok in readable.items() if ok} == {"id", "action", "record_id"}


def test_cipher_is_authenticated_and_rotates():
    old, new = generate_key(), generate_key()
    c_old = TokenCipher([old])
    stored = c_old.encrypt("the-token")
    assert stored.startswith("v1:") and "the-token" not in stored
    assert c_old.decrypt(stored) == "the-token"
    rotated = TokenCipher([new, old])
    assert rotated.decrypt(stored) == "the-token"
    assert not rotated.is_current(stored)
    again = rotated.rotate(stored)
    assert rotated.is_current(again) and TokenCipher([new]).decrypt(again) == "the-token"
    with pytest.raises(DecryptionError):
        TokenCipher([new]).decrypt(stored)
    tampered = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    with pytest.raises(DecryptionError):
        c_old.decrypt(tampered)
    with pytest.raises(DecryptionError, match="not an encrypted token"):
        c_old.decrypt("the-token")


def test_anonymous_audit_limiter_counts_what_it_does_not_write(engine):
    from oauth_service.audit import AnonymousAuditLimiter

    now = [1_800_000_000.0]  # a minute boundary
    limiter = AnonymousAuditLimiter(engine, per_minute=3, clock=lambda: now[0], max_sources=2)
    action = "probe_rejected_" + uuid.uuid4().hex[:8]
    own = [limiter.record(action, ip_address="203.0.113.7", metadata={"error": "bad"}) for _ in range(10)]
    assert own == [True] * 3 + [False] * 7
    assert limiter.record(action, ip_address="203.0.113.8") is True  # another source: its own budget
    rows = lambda: audit_rows(engine, action)  # noqa: E731
    assert len(rows()) == 4 and {r.outcome for r in rows()} == {"denied"}

    now[0] += 61  # the next minute: the first rejection writes the previous minute's summary
    assert limiter.record(action, ip_address="203.0.113.7") is True
    summary = [r for r in rows() if r.metadata.get("aggregated")]
    assert len(summary) == 1
    assert summary[0].metadata["suppressed"] == 7 and summary[0].metadata["audited_individually"] == 3
    assert summary[0].metadata["error"] == "bad" and str(summary[0].ip_address) == "203.0.113.7"
    assert len(rows()) == 6

    # more sources than tracked windows share one window without an IP
    for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5"):
        for _ in range(2):
            limiter.record(action, ip_address=ip)
    assert limiter.flush() >= 1
    total = sum(r.metadata.get("suppressed", 0) for r in rows()) + len(
        [r for r in rows() if not r.metadata.get("aggregated")]
    )
    assert total == 10 + 1 + 1 + 10  # every rejection is accounted for, in a row or in a count
