"""`xero-elt ui` is a data engineer's home: after tenants have been synced, the Dagster UI (a real
webserver and daemon on the real instance) shows the assets, every tenant's partitions and runs
with its name and last status, the schedule's next tick and the sensors running; checked over
GraphQL and in a real browser (Playwright on Debian's Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from orchestration.net import free_loopback_port
from orchestration.resources import TokenVaultResource
from orchestration.sync import sync_tenants

ASSETS_QUERY = """
query {
  assetNodes {
    assetKey { path }
    partitionKeys
    groupName
  }
}
"""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def platform(platform_factory):
    platform = platform_factory(invoices_per_tenant=40, seed=17)
    results = sync_tenants(platform.tenant_ids, instance=platform.instance)
    assert all(r.success for r in results), [r.error for r in results]
    return platform


@pytest.fixture(scope="module")
def names(platform) -> dict[str, str]:
    return {t.tenant_id: t.tenant_name for t in TokenVaultResource().get().active_tenants()}


@pytest.fixture(scope="module")
def ui(platform, tmp_path_factory):
    """`xero-elt ui` on the platform's instance, in its own session (`dagster dev` spawns a
    webserver, a daemon and code servers: all are stopped at the end)."""
    tmp_path = tmp_path_factory.mktemp("ui")
    port = free_loopback_port()
    cli = Path(sys.executable).with_name("xero-elt")
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(cli), "ui", "--port", str(port)], env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # the code location loads after the webserver answers
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                body = requests.post(f"{url}/graphql", json={"query": ASSETS_QUERY}, timeout=30).json()
                if (body.get("data") or {}).get("assetNodes"):
                    break
            except (requests.ConnectionError, ValueError):
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_the_ui_serves_the_assets_with_the_tenant_partitions(ui, platform):
    body = requests.post(f"{ui}/graphql", json={"query": ASSETS_QUERY}, timeout=30).json()
    by_key = {"/".join(n["assetKey"]["path"]): n for n in body["data"]["assetNodes"]}
    assert {"raw_xero/invoices", "staging/stg_xero__invoices", "analytics/invoices",
            "analytics/kpi_monthly"} <= set(by_key), body
    for key, node in by_key.items():
        # Extracts are per tenant; the dbt models are built for every tenant at once.
        want = sorted(platform.tenant_ids) if key.startswith("raw_xero/") else []
        assert sorted(node["partitionKeys"]) == want, key
    assert by_key["raw_xero/invoices"]["groupName"] == "xero_raw"
    assert by_key["analytics/invoices"]["groupName"] == "analytics"


@pytest.mark.skipif(CHROMIUM is None,
                    reason="needs Debian's chromium (apt install chromium); .ci/run installs it")
def test_a_data_engineer_finds_what_they_look_for_in_a_browser(ui, platform, names, tmp_path):
    from playwright.sync_api import sync_playwright

    seen: dict[str, str] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})

            def visit(name: str, path: str, ready: str) -> str:
                page.goto(f"{ui}{path}", wait_until="networkidle")
                skip = page.get_by_role("button", name="Skip")  # "Join the Dagster community"
                if skip.count():
                    skip.first.click()
                page.get_by_text(ready, exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
                seen[name] = page.inner_text("body")
                (tmp_path / f"{name}.txt").write_text(seen[name])  # beside the screenshot
                return seen[name]

            location = "/locations/orchestration.definitions"
            # The raw group: each Xero table, every tenant's partition filled.
            group = visit("raw-group", f"{location}/asset-groups/xero_raw", "100% filled")
            for table in ("invoices", "contacts", "payments", "credit_notes", "accounts", "organisation"):
                assert table in group, table
            assert group.count("100% filled") == 6
            assert group.count(f"{len(platform.tenant_ids)} partitions") == 6
            # A raw asset's partitions: every tenant, materialised, none failed.
            parts = visit("partitions", "/assets/raw_xero/invoices?view=partitions", "Materialized (")
            assert f"Materialized ({len(platform.tenant_ids)})" in parts, parts[:2000]
            assert "Failed (0)" in parts
            for tenant in platform.tenant_ids:
                assert tenant in parts, tenant
            # The runs: each tenant's extract under its name, with its last status.
            runs = visit("runs", "/runs", "xero_tenant_sync")
            for tenant, name in names.items():
                # A run's row reads: id, tags (partition … tenant_name …), job, launcher, status.
                at = runs.index(f"xero-elt/tenant_name: {name}")
                before, after = runs[max(0, at - 300):at], runs[at:at + 200]
                assert f"partition: {tenant}" in before, before
                assert re.search(r"xero_tenant_sync\s+Manually launched\s+Success", after), after
            # The schedule: running, with its next tick.
            schedule = visit("schedule", f"{location}/schedules/daily_tenant_sync", "Next tick")
            assert re.search(r"Next tick\s+\w{3} \d+, 2:00:00 AM UTC", schedule), schedule[:2000]
            assert "Running" in schedule and "xero_tenant_sync" in schedule
            # The sensors: every one running; the tenants' sensor has ticked and remembers them.
            automation = visit("automation", "/automation", "daily_tenant_sync")
            for sensor in ("tenant_connections_sensor", "xero_webhook_sensor", "analytics_after_extracts",
                           "recover_crashed_runs", "audit_successful_runs", "audit_failed_runs"):
                assert sensor in automation, sensor
            remembered = [f'"{tenant}": "active"' for tenant in platform.tenant_ids]
            deadline = time.monotonic() + 120
            while True:  # the daemon ticks it within a minute of starting
                sensor = visit("sensor", f"{location}/sensors/tenant_connections_sensor", "Latest tick")
                if all(r in sensor for r in remembered) or time.monotonic() > deadline:
                    break
                time.sleep(5)
            assert "Running" in sensor and "Next tick" in sensor
            assert all(r in sensor for r in remembered), sensor[:3000]
        finally:
            browser.close()
    assert seen
