"""Resumable extraction: a resource loads in chunks, each a dlt load that commits its rows and its
cursor together, so a failure or a kill resumes after the last chunk that landed and never
fetches it again. Loaded by dlt into real PostgreSQL from the sandbox over HTTP; the kills are
SIGKILLs of a real process at points spread across the pages of a large tenant."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import dlt
import psycopg
import pytest
from dlt.common.configuration.container import Container
from psycopg import sql

from orchestration.resources import dlt_credentials
from tests import secret_watch
from xero_sandbox import SandboxConfig
from xero_sandbox.pytest_plugin import sandbox_token
from xero_source import SourceSettings, XeroClient, load_tenant, xero_source

# What the killed process runs: the tenant's invoices, chunk after chunk, as the sync job does.
# With "kill_after", it kills itself just after the destination committed the first job whose file
# name matches that pattern ("complete_load": a load's end), before dlt could mark that job done.
LOADER = """
import fnmatch, json, os, signal, sys
import dlt
from dlt.common.storages.load_package import PackageStorage
from xero_source import SourceSettings, XeroClient, load_tenant, shared_postgres
from xero_source.destination import _SharedDatasetClient
a = json.loads(sys.argv[1])

def kill():
    print("killed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if (at := a.get("kill_after")) == "complete_load":
    completed = _SharedDatasetClient.complete_load
    _SharedDatasetClient.complete_load = lambda self, load_id: (completed(self, load_id), kill())
elif at:
    mark_done = PackageStorage.save_pending_transition
    def mark_unless_killed(self, load_id, file_name, *rest):
        if fnmatch.fnmatch(file_name, at):
            kill()
        return mark_done(self, load_id, file_name, *rest)
    PackageStorage.save_pending_transition = mark_unless_killed

settings = SourceSettings(api_url=a["api_url"], page_size=a["page_size"],
                          pages_per_chunk=a["pages_per_chunk"])
client = XeroClient(a["tenant_id"], lambda: os.environ["XERO_TEST_TOKEN"], settings)
pipeline = dlt.pipeline(pipeline_name=a["name"], pipelines_dir=a["pipelines_dir"], dataset_name=a["name"],
                        destination=shared_postgres(credentials=a["credentials"]))
load_tenant(pipeline, client, resources=("invoices",))
print("done", client.calls, flush=True)
"""


def loader_args(sb, name: str, pipelines_dir, database_url: str, page_size: int, per_chunk: int) -> dict:
    """What LOADER is given: the sandbox's only tenant, into the dataset and pipeline `name`."""
    return {"api_url": f"{sb.url}/api.xro/2.0", "page_size": page_size, "pages_per_chunk": per_chunk,
            "tenant_id": sb.tenants[0].tenant_id, "name": name, "pipelines_dir": str(pipelines_dir),
            "credentials": dlt_credentials(database_url)}


def run_loader(args: dict, env: dict) -> subprocess.CompletedProcess:
    """LOADER run to its end (or its kill); what it printed is searched for tokens with the rest."""
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=300)
    secret_watch.record(done.stdout + done.stderr)
    return done


def invoice_calls(sb, tenant_id: str) -> int:
    return sum(e["calls"] for e in sb.stats()["endpoints"]
               if e["tenantId"] == tenant_id and e["endpoint"] == "Invoices")


def loaded_versions(database_url: str, dataset: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql.SQL("SELECT invoice_id, updated_date_utc FROM {}.invoices").format(
            sql.Identifier(dataset))).fetchall()


def truth_versions(sb, tenant_id: str) -> set[tuple]:
    from xero_source.columns import as_datetime

    return {(r["InvoiceID"], as_datetime(r["UpdatedDateUTC"]))
            for r in sb.records(tenant_id, "Invoices", include_deleted=True)}


def small_tenant(factory, seed: int, database_url: str, pipelines_dir, prefix: str, invoices: int = 95):
    """A tenant of `invoices` (95) in pages of 10, 3 pages a chunk, and a pipeline of its own:
    (sandbox, tenant id, token, dataset name, pipeline, settings)."""
    sb = factory(SandboxConfig(seed=seed, tenants=1, invoices_per_tenant=invoices, rate_limits=False))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    pipeline = dlt.pipeline(pipeline_name=name, pipelines_dir=str(pipelines_dir), dataset_name=name,
                            destination=dlt.destinations.postgres(credentials=dlt_credentials(database_url)))
    settings = SourceSettings(api_url=f"{sb.url}/api.xro/2.0", page_size=10, pages_per_chunk=3)
    return sb, sb.tenants[0].tenant_id, sandbox_token(sb)["access_token"], name, pipeline, settings


def test_a_resource_loads_in_chunks_that_each_commit(xero_sandbox_factory, database_url, tmp_path):
    sb, tenant, token, name, pipeline, settings = small_tenant(
        xero_sandbox_factory, 21, database_url, tmp_path, "chunks")

    for full_refresh in (False, True):  # the first sync, then the weekly full re-read: both in chunks
        client = XeroClient(tenant, lambda: token, settings)
        loads_before = len(pipeline.list_completed_load_packages())
        contexts_before = set(Container().thread_contexts)
        rows = load_tenant(pipeline, client, resources=("invoices",), full_refresh=full_refresh)
        # The loading thread has ended, and dlt keeps nothing of it (its contexts were kept for ever).
        live = {thread.ident for thread in threading.enumerate()}
        assert set(Container().thread_contexts) <= contexts_before | live
        loads = len(pipeline.list_completed_load_packages()) - loads_before
        assert loads == 3  # 10 pages, 3 a chunk: the third reads the one page left after it
        assert rows["invoices"] >= 95
        versions = loaded_versions(database_url, name)
        assert len(versions) == len(set(versions)) and set(versions) == truth_versions(sb, tenant)
        # Each chunk after the first re-reads only the cursor's short overlap: at most a page more.
        assert client.calls <= 10 + (loads - 1)
        state = pipeline.state["sources"]["xero"]["resources"]["invoices"]
        assert "refresh_in_progress" not in state  # a full re-read that finished is over
        assert state["modified_since"] == max(v[1] for v in versions).isoformat()


def test_the_few_pages_xero_counts_after_a_chunk_are_read_in_it(xero_sandbox_factory, database_url, tmp_path):
    """90 invoices are 9 full pages, 3 chunks of 3: the few pages left after the third (the cursor's
    overlap re-read, and the empty page that confirms a full last one: Xero's last page is the first
    short one) are read in the third chunk, not in a fourth load."""
    sb, tenant, token, name, pipeline, settings = small_tenant(
        xero_sandbox_factory, 25, database_url, tmp_path, "last", invoices=90)
    client = XeroClient(tenant, lambda: token, settings)
    load_tenant(pipeline, client, resources=("invoices",))
    assert len(pipeline.list_completed_load_packages()) == 3
    assert set(loaded_versions(database_url, name)) == truth_versions(sb, tenant)
    assert client.calls <= 10 + 2  # 9 pages and the empty one, and a page of overlap per later chunk


def test_a_run_loads_the_chunk_a_killed_run_left_then_reads_on(xero_sandbox_factory, database_url, tmp_path):
    """A run killed after a chunk was read and before it landed leaves it in the pipeline's folder:
    the next run loads it without reading it again, then reads the rest (dlt's own run stops after
    such a load)."""
    sb, tenant, token, name, pipeline, settings = small_tenant(
        xero_sandbox_factory, 23, database_url, tmp_path, "left")
    client = XeroClient(tenant, lambda: token, settings)
    pipeline.extract(xero_source(tenant, client.token_provider, settings, resources=("invoices",),
                                 client=client))
    pipeline.normalize()  # the first chunk (3 pages), read and ready to load: here the run was killed
    assert len(pipeline.list_normalized_load_packages()) == 1 and client.calls == 3

    before = invoice_calls(sb, tenant)
    rows = load_tenant(pipeline, XeroClient(tenant, lambda: token, settings), resources=("invoices",))
    versions = loaded_versions(database_url, name)
    assert len(versions) == len(set(versions)) and set(versions) == truth_versions(sb, tenant)
    assert rows["invoices"] >= 95 - 30  # the pages after the first chunk (the rest landed from the folder)
    # Pages 4 to 10 in chunks of 3, each re-reading at most the cursor's overlap page: the first
    # chunk was not read again (that alone would be 3 calls more).
    assert invoice_calls(sb, tenant) - before <= 7 + 3, invoice_calls(sb, tenant) - before
    assert pipeline.list_normalized_load_packages() == []


def test_killed_at_ten_points_then_run_again_equals_a_clean_run(xero_sandbox_factory, database_url, tmp_path):
    sb = xero_sandbox_factory(SandboxConfig(seed=22, tenants=1, invoices_per_tenant=3000, rate_limits=False))
    tenant = sb.tenants[0].tenant_id
    pages, page_size, per_chunk = 61, 50, 2  # 60 full pages and the empty one that ends them
    name = f"killed_{uuid.uuid4().hex[:8]}"
    args = loader_args(sb, name, tmp_path, database_url, page_size, per_chunk)
    env = {**os.environ, "XERO_TEST_TOKEN": sandbox_token(sb)["access_token"]}
    rng = random.Random(22)
    kills = 0
    while kills < 10:
        start = invoice_calls(sb, tenant)
        at = rng.randint(1, 2 * per_chunk + 2)  # a page of this attempt, inside or between chunks
        proc = subprocess.Popen([sys.executable, "-c", LOADER, json.dumps(args)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while invoice_calls(sb, tenant) - start < at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is not None:  # it finished first: the tenant is loaded already
            pytest.fail(f"the load finished before kill {kills + 1}: {proc.stdout.read()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        secret_watch.record(proc.stdout.read())
        kills += 1

    before_last = invoice_calls(sb, tenant)
    done = run_loader(args, env)
    assert done.returncode == 0 and done.stdout.startswith("done"), done.stdout[-2000:] + done.stderr[-2000:]
    versions = loaded_versions(database_url, name)
    assert len(versions) == len(set(versions)) and set(versions) == truth_versions(sb, tenant)
    # What landed was not fetched again: the last run read only what the kills had left, and all
    # the runs together at most the pages, plus per kill the chunk in flight and an overlap page.
    last_run = invoice_calls(sb, tenant) - before_last
    assert last_run < pages - 10, last_run
    assert invoice_calls(sb, tenant) <= pages + kills * (per_chunk + 1), invoice_calls(sb, tenant)


@pytest.mark.parametrize("committed", ["invoices.*.parquet", "invoices.*.sql", "_dlt_pipeline_state.*",
                                       "complete_load"],
                         ids=["staged_copy", "merge", "state_row", "load_end"])
def test_a_load_killed_after_a_job_committed_lands_once_when_run_again(
        committed, xero_sandbox_factory, database_url, tmp_path):
    """dlt marks a job done just after the destination committed it; a kill between the two makes
    the next load run the job again (a copy into staging, the merge after it, the state row, the
    load's row in `_dlt_loads`). Before, the copy and the state row failed on their unique
    `_dlt_id` and the tenant stayed stuck on that package."""
    sb = xero_sandbox_factory(SandboxConfig(seed=24, tenants=1, invoices_per_tenant=95, rate_limits=False))
    tenant = sb.tenants[0].tenant_id
    name = f"retried_{uuid.uuid4().hex[:8]}"
    args = loader_args(sb, name, tmp_path, database_url, page_size=10, per_chunk=3)
    env = {**os.environ, "XERO_TEST_TOKEN": sandbox_token(sb)["access_token"]}

    killed = run_loader({**args, "kill_after": committed}, env)
    assert killed.returncode == -signal.SIGKILL and "killed" in killed.stdout, \
        killed.stdout + killed.stderr[-2000:]
    [left] = os.listdir(tmp_path / name / "load" / "normalized")  # the package to load again

    done = run_loader(args, env)
    assert done.returncode == 0 and done.stdout.startswith("done"), done.stdout[-2000:] + done.stderr[-2000:]
    versions = loaded_versions(database_url, name)
    assert len(versions) == len(set(versions)) and set(versions) == truth_versions(sb, tenant)
    with psycopg.connect(database_url) as conn:
        states = dict(conn.execute(sql.SQL(
            "SELECT _dlt_load_id, count(*) FROM {}._dlt_pipeline_state GROUP BY 1").format(
            sql.Identifier(name))).fetchall())
        loads = dict(conn.execute(sql.SQL("SELECT load_id, count(*) FROM {}._dlt_loads GROUP BY 1").format(
            sql.Identifier(name))).fetchall())
    # Every load, the one loaded again included, has one row in each (each moves the cursor on). How
    # many loads there are depends on where the kill fell: a run re-reads from the cursor's overlap.
    assert loads[left] == states[left] == 1
    assert set(loads.values()) == set(states.values()) == {1} and states.keys() == loads.keys()
    assert os.listdir(tmp_path / name / "load" / "normalized") == []
    assert os.listdir(tmp_path / name / "normalize" / "extracted") == []
