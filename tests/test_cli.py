"""The command line as operators use it: migrations, sync's exit code, definitions validation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from tests import secret_watch

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    secret_watch.record(done.stdout + done.stderr)
    return done


def test_db_upgrade_current_and_downgrade(create_database, tmp_path):
    env = {"DATABASE_URL": create_database("cli"), "DAGSTER_HOME": str(tmp_path),
           "DAGSTER_POSTGRES_URL": create_database("clidagster")}
    up = run([str(BIN / "xero-elt"), "db", "upgrade"], env)
    assert up.returncode == 0, up.stderr
    head = up.stdout.strip().rsplit(" ", 1)[-1]
    assert head and head != "None"
    again = run([str(BIN / "xero-elt"), "db", "upgrade"], env)  # idempotent
    assert again.returncode == 0 and again.stdout == up.stdout
    down = run([str(BIN / "xero-elt"), "db", "downgrade", "base"], env)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip().endswith("None")


def sync_env(create_database, tmp_path) -> dict[str, str]:
    return {
        "DATABASE_URL": create_database("clisync"),
        "DAGSTER_POSTGRES_URL": create_database("clisyncdagster"),
        "DAGSTER_HOME": str(tmp_path),
        "TOKEN_ENCRYPTION_KEY": "x" * 43 + "=",
        "XERO_CLIENT_ID": "id",
        "XERO_CLIENT_SECRET": "secret",
    }


def test_sync_exits_non_zero_when_a_tenant_fails(create_database, tmp_path):
    stranger = str(uuid.uuid4())
    result = run([str(BIN / "xero-elt"), "sync", "--tenant", stranger], sync_env(create_database, tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    # Progress as it goes (the extract), then the summary: the tenant's line and its error.
    out = result.stdout
    progress = rf"^\[1/1\] {stranger}: extract FAILED in [\d.]+ s \(run [0-9a-f-]{{36}}\)$"
    assert re.search(progress, out, re.M), out
    assert re.search(rf"^{stranger}\s+FAILED\s+0\s+0\s+0\s+[\d.]+\s+[0-9a-f]{{8}}$", out, re.M), out
    assert re.search(rf"^{stranger}: step extract_xero_tenant: .*not connected", out, re.M | re.S), out
    assert "0 of 1 tenant(s) synced, 1 FAILED" in out
    # Nothing was extracted: no analytics build was started for nothing.
    assert "analytics build" not in out


def test_sync_without_tenants_says_so_and_succeeds(create_database, tmp_path):
    result = run([str(BIN / "xero-elt"), "sync"], sync_env(create_database, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no active tenants: connect a Xero organisation first" in result.stdout
    assert "analytics build" not in result.stdout


def test_bad_configuration_is_reported_without_a_traceback(tmp_path):
    result = run([str(BIN / "xero-elt"), "db", "upgrade"],
                 {"DATABASE_URL": "mysql://root@localhost/x", "DAGSTER_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_dagster_definitions_validate(tmp_path):
    result = run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                 {"DAGSTER_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr
