"""The last test of a run: no token Xero (the sandbox) issued during the whole run appears in clear in
any log record, any command's output, any Dagster event log or any file the run left behind.

tests/oauth_service/ checks more secrets (client secret, PKCE verifiers, database passwords) in
more depth (DEBUG logs, every app table) for the service alone; this one spans every test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import secret_watch

REPO = Path(__file__).resolve().parents[1]
# Sandbox tokens are JWTs (base64url and dots) or URL-safe base64: any run of these characters.
CANDIDATE = re.compile(r"[A-Za-z0-9_\-.]{16,}")


def test_no_token_in_clear_anywhere_in_the_run(tmp_path_factory):
    secrets = secret_watch.issued_secrets()
    if not secrets:
        pytest.skip("no sandbox issued a token in this run (run with the other tests)")
    places = {"log records and command output": "\n".join(secret_watch.SINK.lines)}
    places.update({str(path): text for path, text in secret_watch.leftover_text(
        tmp_path_factory.getbasetemp(), REPO / "dbt_project" / "logs", REPO / "dbt_project" / "target",
    ).items()})
    leaks = sorted((where, token[:8] + "…") for where, text in places.items()
                   for token in set(CANDIDATE.findall(text)) & secrets)
    assert leaks == [], f"tokens in clear: {leaks[:20]}"
    assert secret_watch.SINK.lines, "the capture captured nothing"
