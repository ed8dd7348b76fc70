"""The run-wide check for tokens in clear (tests/conftest.py) can fail: its detector finds a token
wherever it appears in text, and only the tokens it was given."""

from __future__ import annotations

from tests import secret_watch

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZW5hbnQifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
OTHER = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"


def test_the_detector_finds_an_issued_token_in_a_log_line_or_a_file():
    places = {
        "log records and command output": f"requests DEBUG GET /api.xro/2.0/Invoices Bearer {TOKEN} 200",
        "/tmp/dagster_home/storage/run.log": f'{{"refresh_token": "{OTHER}"}}',
        "/tmp/clean.log": "tenant 3f0a2b4c: 3 invoices loaded",
    }
    assert secret_watch.find_leaks({TOKEN, OTHER}, places) == [
        ("/tmp/dagster_home/storage/run.log", OTHER[:8] + "…"),
        ("log records and command output", TOKEN[:8] + "…"),
    ]


def test_the_detector_reports_nothing_when_no_issued_token_appears():
    places = {"log records and command output": f"a token was refreshed (v1:{'x' * 40})"}
    assert secret_watch.find_leaks({TOKEN, OTHER}, places) == []
    assert secret_watch.find_leaks(set(), {"x": TOKEN}) == []
