"""`xero-elt ui` is a data engineer's home: after `xero-elt demo`, the Dagster UI (a real webserver
and daemon on the real instance) shows the assets, every tenant's partitions and runs with its
name and last status, the schedule's next tick and the sensors running, and a run launched from
it works: the demo's local Xero comes back with the UI. Checked over GraphQL and in a real
browser (Playwright on Debian's Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import requests

from orchestration.net import free_loopback_port
from orchestration.settings import read_env_file
from tests.test_demo import FOREIGN, run_demo, stored_tokens, tenant_lines

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
XERO_ELT = Path(sys.executable).with_name("xero-elt")


@dataclass
class DemoWorld:
    env: dict[str, str]  # what the user's shell holds: the database, no Xero or secrets
    local: Path
    database_url: str
    names: dict[str, str]  # tenant id → organisation name

    @property
    def tenant_ids(self) -> list[str]:
        return sorted(self.names)


@pytest.fixture(scope="module")
def platform(create_database, tmp_path_factory) -> DemoWorld:
    """What a user has after `xero-elt demo`: its database, Dagster instance and `.local/`; the
    demo's local Xero stopped with it."""
    local = tmp_path_factory.mktemp("demo-local")
    database_url = create_database("uidemo")
    env = {"DATABASE_URL": database_url, "DAGSTER_POSTGRES_URL": create_database("uidagster"),
           "XERO_ELT_LOCAL_DIR": str(local)}
    output = run_demo(env, "--invoices", "40")
    names = dict(re.findall(r"^(.+) \(([0-9a-f-]{36})\): run \w+ ok$", output, re.M))
    assert len(tenant_lines(output)) == 2, output
    return DemoWorld(env, local, database_url, {tenant: name for name, tenant in names.items()})


@pytest.fixture(scope="module")
def names(platform) -> dict[str, str]:
    return platform.names


class RunningUI(str):
    """The UI's URL, and the log of every process `xero-elt ui` started."""

    log: Path


@pytest.fixture(scope="module")
def ui(platform, tmp_path_factory):
    """`xero-elt ui` in the demo's world, in its own session (`dagster dev` spawns a webserver, a
    daemon and code servers: all are stopped at the end)."""
    tmp_path = tmp_path_factory.mktemp("ui")
    port = free_loopback_port()
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 - closed below
    clean = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    proc = subprocess.Popen([str(XERO_ELT), "ui", "--port", str(port)], env={**clean, **platform.env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = RunningUI(f"http://127.0.0.1:{port}")
    url.log = tmp_path / "ui.log"
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
    assert {"raw_xero/xero_invoices", "staging/stg_xero__invoices", "analytics/invoices",
            "analytics/kpi_monthly"} <= set(by_key), body
    for key, node in by_key.items():
        # Extracts are per tenant; the dbt models are built for every tenant at once.
        want = sorted(platform.tenant_ids) if key.startswith("raw_xero/") else []
        assert sorted(node["partitionKeys"]) == want, key
    assert by_key["raw_xero/xero_invoices"]["groupName"] == "raw_xero"
    assert by_key["analytics/invoices"]["groupName"] == "analytics"


@pytest.mark.skipif(CHROMIUM is None,
                    reason="needs Debian's chromium (apt install chromium); .ci/run installs it")
def test_a_data_engineer_finds_what_they_look_for_in_a_browser(ui, platform, names, tmp_path):
    from playwright.sync_api import sync_playwright

    seen: dict[str, str] = {}
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = new_page(browser)

            def visit(name: str, path: str, ready: str) -> str:
                page.goto(f"{ui}{path}", wait_until="networkidle")
                page.get_by_text(ready, exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
                seen[name] = page.inner_text("body")
                (tmp_path / f"{name}.txt").write_text(seen[name])  # beside the screenshot
                return seen[name]

            location = "/locations/orchestration.definitions"
            # The raw group: each Xero table, every tenant's partition filled.
            group = visit("raw-group", f"{location}/asset-groups/raw_xero", "100% filled")
            for table in ("invoices", "contacts", "payments", "credit_notes", "accounts", "organisation"):
                assert table in group, table
            assert group.count("100% filled") == 6
            assert group.count(f"{len(platform.tenant_ids)} partitions") == 6
            # A raw asset's partitions: every tenant, materialised, none failed.
            parts = visit("partitions", "/assets/raw_xero/xero_invoices?view=partitions", "Materialized (")
            assert f"Materialized ({len(platform.tenant_ids)})" in parts, parts[:2000]
            assert "Failed (0)" in parts
            for tenant in platform.tenant_ids:
                assert tenant in parts, tenant
            # Partition keys are tenant ids (stable; names change): a tenant's partition shows its
            # name beside the id, in its materialisation.
            for tenant, name in names.items():
                page.get_by_text(re.compile(rf"^{tenant[:8]}.*…")).first.click()
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
                page.screenshot(path=str(tmp_path / f"partition-{tenant[:8]}.png"), full_page=True)
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


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])


def new_page(browser):
    """A page that skips Dagster's "Join the Dagster community" invitation whenever it shows up
    (at load or seconds later) in front of what the test clicks."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.add_locator_handler(page.get_by_text("Connect with thousands of other data practitioners"),
                             lambda: page.get_by_role("button", name="Skip").first.click())
    return page


def open_page(browser, ui: str, path: str):
    page = new_page(browser)
    page.goto(f"{ui}{path}", wait_until="networkidle")
    return page


def launch_tenant_from_ui(browser, ui: str, tenant: str, screenshots: Path) -> dict:
    """A data engineer's backfill of one tenant: the extract job's partitions → Materialize… → the
    tenant → launch; then the run's page until it has finished. Returns the run (GraphQL)."""
    page = open_page(browser, ui, "/locations/orchestration.definitions/jobs/xero_tenant_sync/partitions")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.locator(".dagster-dialog")
    dialog.get_by_text("Select a partition or create one").click()
    page.keyboard.type(tenant[:8])
    # The option by its partition key. Dagster shows the key middle-truncated ("3ad4d…0a28") when it
    # measures too little room, as it can while the popover opens; the whole key is then only in a
    # hidden measuring element, which a click waits on to be visible (a 30 s time-out, once in a full
    # run). The option's tooltip attribute always holds the whole key.
    page.locator(f'.dagster-popover [data-tooltip="{tenant}"]').first.click()
    page.keyboard.press("Escape")
    dialog.get_by_text("1 partition", exact=True).wait_for(timeout=30_000)
    page.screenshot(path=str(screenshots / f"launch-{tenant[:8]}.png"), full_page=True)
    # One partition is one run ("Launch 1 run"); more would make a backfill.
    dialog.get_by_role("button", name=re.compile(r"^Launch (backfill|1 run)$")).click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
    toast.wait_for(timeout=60_000)
    run = wait_for_run(ui, re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0))
    page.goto(f"{ui}/runs/{run['runId']}", wait_until="networkidle")
    page.get_by_text("Success" if run["status"] == "SUCCESS" else "Failure", exact=True).first.wait_for(
        timeout=60_000)
    page.screenshot(path=str(screenshots / f"run-{tenant[:8]}.png"), full_page=True)
    page.close()
    return run


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt install chromium); .ci/run installs it")


@needs_chromium
def test_a_tenant_backfill_launched_from_the_ui_after_the_demo_succeeds(ui, platform, tmp_path):
    """The demo's local Xero stopped with the demo; `xero-elt ui` brought it back, so a run launched
    from the UI extracts from it (not from Xero's real hosts) with the demo's stored tokens."""
    from playwright.sync_api import sync_playwright

    tenant = platform.tenant_ids[1]
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            run = launch_tenant_from_ui(browser, ui, tenant, tmp_path)
        finally:
            browser.close()
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == tenant
    assert tags["xero-elt/tenant_name"] == platform.names[tenant]
    # The extract read the demo's Xero again: the tenant's rows are its data, nothing lost or doubled.
    with psycopg.connect(platform.database_url) as conn:
        invoices = conn.execute("SELECT count(*) FROM analytics.invoices WHERE tenant_id = %s",
                                (tenant,)).fetchone()[0]
    assert invoices == 40
    # And no token the demo's Xero issued is in clear in what the UI's processes logged.
    key = read_env_file(platform.local / "demo.env")["TOKEN_ENCRYPTION_KEY"]
    logged = ui.log.read_text(errors="ignore")
    assert [t[:8] for t in stored_tokens(platform.database_url, key) if t in logged] == []


@needs_chromium
def test_one_tenants_failed_check_stays_shown_as_its_own_after_another_tenant_passes(ui, platform, tmp_path):
    """Xero sends one of the first tenant's invoices with a Total that is not a number: its extract
    quarantines it and that tenant's data-quality check fails. The second tenant's run passes its
    own check afterwards; the UI still shows the first tenant's failure, under its partition."""
    from playwright.sync_api import sync_playwright

    spoilt, other = platform.tenant_ids
    # The demo's local Xero, as `xero-elt ui` announced it; its admin API spoils one record.
    sandbox = re.search(r"local Xero at (http://127\.0\.0\.1:\d+)", ui.log.read_text(errors="ignore"))
    admin = f"{sandbox.group(1)}/__sandbox"
    first = requests.get(f"{admin}/tenants/{spoilt}/truth", params={"format": "jsonl"}, timeout=30)
    invoice_id = json.loads(first.text.splitlines()[0])["InvoiceID"]
    requests.post(f"{admin}/clock", json={"advance": 60}, timeout=30).raise_for_status()
    requests.post(f"{admin}/tenants/{spoilt}/mutations", timeout=30,
                  json={"action": "edit_invoice", "invoice_id": invoice_id, "reference": "spoilt"}
                  ).raise_for_status()
    requests.post(f"{admin}/faults", timeout=30, json={
        "kind": "bad_amount", "endpoint": "Invoices", "tenant_id": spoilt, "page": 1, "times": 1,
    }).raise_for_status()

    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            assert launch_tenant_from_ui(browser, ui, spoilt, tmp_path)["status"] == "SUCCESS"
            assert launch_tenant_from_ui(browser, ui, other, tmp_path)["status"] == "SUCCESS"
            page = open_page(browser, ui, "/assets/raw_xero/xero_invoices?view=checks"
                                          "&checkDetail=no_quarantined_records")
            page.locator("button[role=tab]#partitions").click()
            page.get_by_text("Failed (1)").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "check-partitions.png"), full_page=True)
            partitions = page.inner_text("body")
            (tmp_path / "check-partitions.txt").write_text(partitions)
            assert "Failed (1)" in partitions and "Passed (1)" in partitions, partitions[-1500:]
            # The tenant's row (its id cut in the middle, as the list shows it): its latest result.
            page.get_by_text(re.compile(rf"^{spoilt[:8]}.*…")).first.click()
            page.get_by_text(f"{platform.names[spoilt]}: 1 record(s) in quarantine").first.wait_for(
                timeout=60_000)
            page.screenshot(path=str(tmp_path / "check-failed-tenant.png"), full_page=True)
        finally:
            browser.close()


@needs_chromium
def test_the_schedules_next_tick_launched_from_the_ui_succeeds(ui, platform, tmp_path):
    """The schedule's page → "Preview tick result" evaluates its next tick as the daemon would at
    02:00 and launches its runs: one per connected tenant, and they succeed against the demo's
    local Xero."""
    from playwright.sync_api import sync_playwright

    before = {r["runId"] for r in sync_runs(ui)}
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = open_page(browser, ui, "/locations/orchestration.definitions/schedules/daily_tenant_sync")
            page.get_by_role("button", name="Preview tick result").click()
            dialog = page.locator(".dagster-dialog")
            # The tick to simulate: the next one (the list offers past ones first).
            dialog.get_by_role("button", name=re.compile(r"\d:\d\d(:\d\d)? [AP]M UTC")).click()
            tick = next_tick(ui)
            page.get_by_role("menuitem", name=tick_label(tick)).click()
            dialog.get_by_text(tick_label(tick)).wait_for(timeout=10_000)  # the one selected
            dialog.get_by_role("button", name="Continue").click()
            dialog.get_by_text(f"Requested runs ({len(platform.tenant_ids)})").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "schedule-tick.png"), full_page=True)
            dialog.get_by_role("button", name="Launch all & commit tick result").click()
            deadline, tenants = time.monotonic() + 60, len(platform.tenant_ids)
            while len(new := [r for r in sync_runs(ui) if r["runId"] not in before]) < tenants:
                assert time.monotonic() < deadline, new
                time.sleep(1)
        finally:
            browser.close()
    runs = [wait_for_run(ui, r["runId"]) for r in new]
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
    assert sorted(t["dagster/partition"] for t in tags) == platform.tenant_ids
    assert all(t["xero-elt/tenant_name"] == platform.names[t["dagster/partition"]] for t in tags)
    assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs), runs


RUNS_QUERY = """
query {
  runsOrError(filter: {pipelineName: "xero_tenant_sync"}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


NEXT_TICK_QUERY = """
query {
  scheduleOrError(scheduleSelector: {repositoryLocationName: "orchestration.definitions",
                  repositoryName: "__repository__", scheduleName: "daily_tenant_sync"}) {
    ... on Schedule { futureTicks(limit: 1) { results { timestamp } } }
  }
}
"""


def next_tick(ui: str) -> int:
    """The schedule's next tick, as a Unix timestamp (what the UI's tick list is keyed by)."""
    body = requests.post(f"{ui}/graphql", json={"query": NEXT_TICK_QUERY}, timeout=30).json()
    [tick] = body["data"]["scheduleOrError"]["futureTicks"]["results"]
    assert tick["timestamp"] > time.time(), tick
    return int(tick["timestamp"])


def tick_label(timestamp: int) -> re.Pattern:
    """How the UI writes a tick's time: `Dec 7, 2:00 AM UTC` (the year too when not this one, and
    the seconds in some places)."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return re.compile(rf"^{at:%b} {at.day},( {at.year},)? {at:%-I:%M}(:{at:%S})? {at:%p} UTC$")


def sync_runs(ui: str) -> list[dict]:
    """The extract job's runs, newest first (GraphQL, as the UI reads them)."""
    return requests.post(f"{ui}/graphql", json={"query": RUNS_QUERY}, timeout=30).json(
    )["data"]["runsOrError"]["results"]


def wait_for_run(ui: str, short_id: str, timeout: float = 240) -> dict:
    """The run whose id starts with `short_id`, once it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        run = next(r for r in sync_runs(ui) if r["runId"].startswith(short_id))
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
            return run
        time.sleep(2)
