"""`xero-elt ui` serves the Dagster UI: the asset graph, with the tenant partitions, over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from orchestration.net import free_loopback_port
from orchestration.partitions import TENANT_PARTITIONS_NAME
from orchestration.settings import prepare_environment

TENANTS = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]

ASSETS_QUERY = """
query {
  assetNodes {
    assetKey { path }
    partitionKeys
    groupName
  }
}
"""


@pytest.fixture(scope="module")
def ui(create_database, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _run_ui(create_database, tmp_path_factory.mktemp("ui"), monkeypatch)


def _run_ui(create_database, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", create_database("ui"))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", create_database("uidagster"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    prepare_environment()
    with dg.DagsterInstance.get() as instance:  # the instance the UI will serve
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, TENANTS)
    env = dict(os.environ)
    port = free_loopback_port()
    cli = Path(sys.executable).with_name("xero-elt")
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 - closed below
    # Its own session: `dagster dev` spawns a webserver, a daemon and code servers; stop them all.
    proc = subprocess.Popen([str(cli), "ui", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            log_tail = (tmp_path / "ui.log").read_text()[-3000:]
            raise AssertionError("the Dagster UI did not come up:\n" + log_tail)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_ui_serves_asset_graph_with_tenant_partitions(ui):
    deadline = time.monotonic() + 120
    while True:  # the code location loads after the webserver answers
        body = requests.post(f"{ui}/graphql", json={"query": ASSETS_QUERY}, timeout=30).json()
        nodes = (body.get("data") or {}).get("assetNodes") or []
        if nodes or time.monotonic() > deadline:
            break
        time.sleep(2)
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert {"raw_xero/invoices", "staging/stg_xero__invoices", "analytics/invoices"} <= set(by_key), body
    for key, node in by_key.items():
        # Extracts are per tenant; the dbt models are built for every tenant at once.
        want = sorted(TENANTS) if key.startswith("raw_xero/") else []
        assert sorted(node["partitionKeys"]) == want, key
    assert by_key["raw_xero/invoices"]["groupName"] == "xero_raw"
    assert by_key["analytics/invoices"]["groupName"] == "analytics"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None,
                    reason="needs Debian's chromium (apt install chromium); .ci/run installs it")
def test_a_person_sees_the_tenant_partitions_in_a_browser(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{ui}/assets/raw_xero/invoices?view=partitions", wait_until="networkidle")
            skip = page.get_by_role("button", name="Skip")  # "Join the Dagster community" on a new instance
            if skip.count():
                skip.first.click()
            page.get_by_text("2 Partitions Selected").wait_for(timeout=60_000)
            body = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "partitions.png"))
        finally:
            browser.close()
    assert "Missing (2)" in body  # both tenants listed, neither materialised yet
    for tenant in TENANTS:
        assert tenant in body
