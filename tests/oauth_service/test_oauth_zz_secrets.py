"""Runs last in this folder: no token in clear in any database column nor in any captured log line."""

from oauth_testlib import LOG_SINK, SEEN_TOKENS, api_get
from sqlalchemy import text

TABLES = ("app.xero_connections", "app.audit_log", "app.oauth_states", "app.webhook_events")


def test_no_token_in_clear_in_the_database_or_the_logs(make_browser, sandbox, tenant_ids, engine, vault):
    # make sure this test has tokens to look for even when run alone
    user = make_browser()
    assert user.connect([tenant_ids[0]]) == {"connected": ["1"]}
    token = vault.access_token_for(tenant_ids[0])
    assert api_get(sandbox, token, tenant_ids[0]).status_code == 200

    with engine.connect() as conn:
        for row in conn.execute(text("SELECT access_token, refresh_token FROM app.xero_connections")).all():
            SEEN_TOKENS.update(vault.cipher.decrypt(v) for v in row if v)
        dump = "\n".join(
            line
            for table in TABLES
            for line in conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t")).scalars()  # noqa: S608
        )
    tokens = {t for t in SEEN_TOKENS if t and len(t) >= 20}
    assert len(tokens) >= 4
    assert dump.count('"v1:') >= 2  # stored, encrypted

    in_db = [t[:12] for t in tokens if t in dump]
    assert in_db == [], f"tokens in clear in the database: {in_db}"

    lines = LOG_SINK.lines
    assert len(lines) > 50  # the capture did capture
    logs = "\n".join(lines)
    in_logs = [t[:12] for t in tokens if t in logs]
    assert in_logs == [], f"tokens in clear in the logs: {in_logs}"
