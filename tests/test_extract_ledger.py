"""The extract ledger (`raw_xero._tenant_extracts`) made by several first extracts at once, on a
new database: each records its tenant, none fails on PostgreSQL's catalogue."""

from __future__ import annotations

import threading

import psycopg
import pytest

from orchestration.extract_ledger import record_extract

EXTRACTS = 8


@pytest.mark.parametrize("attempt", range(3))
def test_first_extracts_ending_at_once_all_make_and_use_one_ledger(create_database, attempt):
    database_url = create_database("ledger")
    start = threading.Barrier(EXTRACTS)
    failures: list[BaseException] = []

    def extract(n: int) -> None:
        try:
            start.wait(timeout=30)
            record_extract(database_url, f"tenant-{n}", f"run-{n}")
        except BaseException as exc:  # noqa: BLE001 (reported below, with the others)
            failures.append(exc)

    threads = [threading.Thread(target=extract, args=(n,)) for n in range(EXTRACTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant_id, run_id FROM raw_xero._tenant_extracts ORDER BY tenant_id")
        assert rows.fetchall() == [(f"tenant-{n}", f"run-{n}") for n in range(EXTRACTS)]
