"""The quick benchmarks still run, at their smallest: a bench is only read when someone needs its
figures, and two had stopped running unnoticed (one still called the client's paging as it was
before pages were typed). Figures are not checked here: benchmarks are not tests. The slower
benches (the pipeline, fleet and dbt ones) take a minute or more each even at their smallest and
are left to whoever runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import secret_watch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(("script", "args", "says"), [
    pytest.param("source_throughput.py", ["--invoices", "1000", "--repeat", "2"], "1,000 invoices: ",
                 id="source_throughput"),
    pytest.param("source_pacing.py", ["--calls", "5", "--tenants", "2"],
                 "2 tenants at once: 80 invoices, 10 calls", id="source_pacing"),
    pytest.param("sandbox_scale.py", ["--invoices", "2000"], "ground truth: count", id="sandbox_scale"),
])
def test_a_quick_benchmark_runs_at_its_smallest(script, args, says, postgres_server):
    env = {**os.environ, "TEST_DATABASE_URL": postgres_server.url}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    secret_watch.record(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert says in done.stdout, done.stdout[-3000:]


def test_the_oauth_service_benchmark_runs_at_its_smallest(postgres_server):
    done = subprocess.run([sys.executable, str(BENCH / "oauth_load.py"), "--users", "2", "--rounds", "1",
                           "--tenants", "2", "--database-url", postgres_server.url],
                          capture_output=True, text=True, timeout=300)
    secret_watch.record(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flows/s" in done.stdout, done.stdout[-3000:]
