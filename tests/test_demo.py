"""`xero-elt demo`, the README's main job, run twice as a user would: both runs succeed, every
tenant matches the sandbox, and the second run loads nothing twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from oauth_service.crypto import TokenCipher
from orchestration.settings import read_env_file
from tests import secret_watch

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
# Nothing of the test process's own configuration may leak into the demo.
FOREIGN = ("XERO_", "AUTH_", "APP_", "DEMO_", "TOKEN_", "DAGSTER_", "DATABASE_URL", "DBT_PG_", "PGTZ")


def run_demo(env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    done = subprocess.run([str(BIN / "xero-elt"), "demo", *args], env={**clean, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    secret_watch.record(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def tenant_lines(output: str) -> dict[str, tuple[int, str]]:
    """tenant id → (raw invoice versions, the analytics line) from the demo's report."""
    out = {}
    report = re.compile(r"\(([0-9a-f-]{36})\): run \w+ ok\n"
                        r"  fetched this run: .*; raw invoice versions: (\d+)\n"
                        r"  (analytics\.invoices: .*)\n")
    for m in report.finditer(output):
        out[m.group(1)] = (int(m.group(2)), m.group(3))
    return out


def test_the_demo_runs_twice_and_loads_nothing_twice(create_database, tmp_path):
    local = tmp_path / "local"
    database_url = create_database("demo")
    env = {"DATABASE_URL": database_url, "DAGSTER_POSTGRES_URL": create_database("demodagster"),
           "XERO_ELT_LOCAL_DIR": str(local)}
    first_output = run_demo(env)
    first = tenant_lines(first_output)
    assert len(first) == 2, first
    for _, line in first.values():
        assert line.endswith(" matches"), line
    assert (local / "demo.env").stat().st_mode & 0o777 == 0o600

    second_output = run_demo(env)
    second = tenant_lines(second_output)
    assert second.keys() == first.keys()
    for tenant_id, (versions, line) in second.items():
        assert line == first[tenant_id][1]  # same counts and totals, still matching the sandbox
        assert versions == first[tenant_id][0], "the second run loaded invoice versions again"
    assert "xero-elt ui" in second_output

    # The demo's sandbox ran in its own process: look for the tokens it stored (decrypted with the
    # demo's key) in what it printed and in every file it left (logs, Dagster storage, dlt state).
    tokens = stored_tokens(database_url, read_env_file(local / "demo.env")["TOKEN_ENCRYPTION_KEY"])
    assert len(tokens) == 2  # one grant covers both organisations: its access and refresh token
    files = "\n".join(p.read_text(errors="ignore") for p in local.rglob("*")
                      if p.is_file() and "postgres" not in p.parts and p.stat().st_size < 5_000_000)
    leaked = [t[:8] for t in tokens if t in first_output + second_output + files]
    assert leaked == [], f"demo tokens in clear: {leaked}"


def stored_tokens(database_url: str, keys: str) -> set[str]:
    cipher = TokenCipher(keys.split(","))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT access_token, refresh_token FROM app.xero_connections").fetchall()
    return {cipher.decrypt(value) for row in rows for value in row if value}
