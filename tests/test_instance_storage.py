"""A process that executes runs keeps its Dagster storage connections: counted by PostgreSQL itself."""

from __future__ import annotations

import time

import dagster as dg
import psycopg
import yaml

from orchestration.instance_storage import keep_storage_connections

EVENTS = 30
ASSETS = 8  # as an extract run materialises one asset per raw table


@dg.multi_asset(specs=[dg.AssetSpec(f"table_{i}") for i in range(ASSETS)])
def chatty(context):
    for i in range(EVENTS):  # each is an event in the run's log: a write to the event log storage
        context.log.info(f"event {i}")
    for i in range(ASSETS):  # storing each checks for a table on a second connection, inside the first
        yield dg.MaterializeResult(asset_key=f"table_{i}")


chatty_job = dg.define_asset_job("chatty_job", selection=[chatty]).resolve(
    asset_graph=dg.Definitions(assets=[chatty]).resolve_asset_graph())


def _sessions(server_url: str, database: str) -> int:
    """Sessions ever opened on `database`. The ones still open (a pool's) are ended first: PostgreSQL
    counts a session in pg_stat_database when it ends."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        deadline = time.monotonic() + 30
        open_now = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        while conn.execute(open_now, (database,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"sessions on {database} never ended"
            time.sleep(0.05)
        ever = "SELECT sessions FROM pg_stat_database WHERE datname = %s"
        return conn.execute(ever, (database,)).fetchone()[0]


def _sessions_for_a_run(postgres_server, create_database, tmp_path, pooled: bool) -> int:
    url = create_database("dagster")
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    home = tmp_path / ("pooled" if pooled else "default")
    home.mkdir()
    storage_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)  # as settings.py names it
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": storage_url}},
                                                       "telemetry": {"enabled": False}}))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        chatty_job.execute_in_process(instance=instance)  # creates the storage's tables: not counted
        if pooled:
            keep_storage_connections(instance)
        before = _sessions(postgres_server.url, database)
        assert chatty_job.execute_in_process(instance=instance).success
        return _sessions(postgres_server.url, database) - before


def test_a_run_on_a_pooled_instance_opens_a_handful_of_connections_not_one_per_event_or_asset(
        postgres_server, create_database, tmp_path):
    default = _sessions_for_a_run(postgres_server, create_database, tmp_path, pooled=False)
    pooled = _sessions_for_a_run(postgres_server, create_database, tmp_path, pooled=True)
    assert default >= EVENTS, default  # Dagster's default: a connection per write
    # A connection per storage, kept: not one per asset event (10 here with the pool of one).
    assert pooled <= 4, pooled
