"""Runs last in this folder: no token nor secret in clear in any app table nor in any captured log line.

Looked for: every access and refresh token seen during the run, the Xero client secret, the JWT
secret, the webhook key, the token encryption key, every authorization code Xero (the sandbox) handed
out, every PKCE verifier the service generated, and the passwords of logins created by the tests.
"""

from oauth_testlib import (
    CLIENT_SECRET,
    JWT_SECRET,
    LOG_SINK,
    SEEN_SECRETS,
    SEEN_TOKENS,
    TOKEN_KEY,
    WEBHOOK_KEY,
    api_get,
)
from sqlalchemy import text


def _app_tables(conn) -> list[str]:
    return list(
        conn.execute(
            text(
                "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables "
                "WHERE table_schema = 'app' AND table_type = 'BASE TABLE' ORDER BY 1"
            )
        ).scalars()
    )


def test_no_token_or_secret_in_clear_in_the_database_or_the_logs(
    make_browser, sandbox, tenant_ids, engine, vault
):
    # Make sure this test has tokens, codes and verifiers to look for whichever tests ran before it
    # in this worker (alone, or after only a few): three connections of its own.
    def note_stored_tokens():
        with engine.connect() as conn:
            for row in conn.execute(text("SELECT access_token, refresh_token FROM app.xero_connections")):
                SEEN_TOKENS.update(vault.cipher.decrypt(v) for v in row if v)

    for _ in range(3):
        user = make_browser()
        assert user.connect([tenant_ids[0]]) == {"connected": ["1"]}
        note_stored_tokens()
    token = vault.access_token_for(tenant_ids[0])
    assert api_get(sandbox, token, tenant_ids[0]).status_code == 200
    note_stored_tokens()

    with engine.connect() as conn:
        verifiers = {
            vault.cipher.decrypt(v)
            for v in conn.execute(text("SELECT code_verifier FROM app.oauth_states")).scalars()
        }
        tables = _app_tables(conn)
        dump = "\n".join(
            line
            for table in tables
            for line in conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t")).scalars()  # noqa: S608
        )
    assert {"app.xero_connections", "app.audit_log", "app.oauth_states", "app.webhook_events"} <= set(tables)
    tokens = {t for t in SEEN_TOKENS if t and len(t) >= 20}
    assert len(tokens) >= 4
    assert dump.count('"v1:') >= 2  # stored, encrypted
    codes = {s for s in SEEN_SECRETS if s}
    assert len(codes) >= 3 and len(verifiers) >= 3
    secrets = {
        "XERO_CLIENT_SECRET": CLIENT_SECRET,
        "AUTH_JWT_SECRET": JWT_SECRET,
        "XERO_WEBHOOK_KEY": WEBHOOK_KEY,
        "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
        **{f"token {t[:8]}…": t for t in tokens},
        **{f"code/password {c[:6]}…": c for c in codes},
        **{f"PKCE verifier {v[:6]}…": v for v in verifiers},
    }

    in_db = [name for name, value in secrets.items() if value in dump]
    assert in_db == [], f"in clear in the database: {in_db}"

    lines = LOG_SINK.lines
    assert len(lines) > 50  # the capture did capture
    logs = "\n".join(lines)
    in_logs = [name for name, value in secrets.items() if value in logs]
    assert in_logs == [], f"in clear in the logs: {in_logs}"
