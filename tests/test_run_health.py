"""How the reaper tells a run worker that is still starting from one that died before it started."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import dagster as dg

from orchestration.jobs import SYNC_JOB_NAME
from orchestration.run_health import START_GRACE_SECONDS, _dead_reason


def record(*, created: float, launched: float, started: float | None = None):
    return SimpleNamespace(dagster_run=dg.DagsterRun(job_name=SYNC_JOB_NAME, run_id="r1"), start_time=started,
                           create_timestamp=datetime.fromtimestamp(created, UTC),
                           update_timestamp=datetime.fromtimestamp(launched, UTC))


def test_a_run_that_waited_in_the_queue_is_timed_from_its_launch_not_its_creation():
    now = time.time()
    # Queued for an hour behind other runs, launched 10 s ago: its worker is still starting.
    assert _dead_reason(None, record(created=now - 3600, launched=now - 10), now) is None
    # Launched longer ago than the grace without reporting alive: its worker died starting up.
    late = record(created=now - 3600, launched=now - START_GRACE_SECONDS - 1)
    assert "never reported alive" in _dead_reason(None, late, now)
    # Started (the process runs) but its resources not yet up: timed from the start.
    assert _dead_reason(None, record(created=now - 3600, launched=now - 3600, started=now - 5), now) is None
