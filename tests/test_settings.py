"""Settings validation: missing or malformed values get clear errors naming the variable."""

from __future__ import annotations

import os

import psycopg
import pytest
from psycopg import sql

from orchestration.settings import DatabaseUrl, SettingsError, dbt_connection_env, prepare_environment


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://root@localhost/db", "must be a postgresql:// URL"),
        ("postgresql:///xero", "must name a host"),
        ("postgresql://postgres@localhost:5432", "must name a database"),
        ("postgresql://postgres@localhost:99999x/db", "malformed port"),
    ],
)
def test_database_url_errors_name_the_variable(value, message):
    with pytest.raises(SettingsError) as err:
        DatabaseUrl.parse(value)
    assert "DATABASE_URL" in str(err.value)
    assert message in str(err.value)


def test_database_url_parts_feed_dbt():
    db = DatabaseUrl.parse("postgres://app:s3cret@db.internal:6543/xero")
    assert db.dbt_env() == {
        "DBT_PG_HOST": "db.internal",
        "DBT_PG_PORT": "6543",
        "DBT_PG_USER": "app",
        "DBT_PG_PASSWORD": "s3cret",
        "DBT_PG_DATABASE": "xero",
        "DBT_PG_SSLMODE": "prefer",
    }
    assert db.with_database("dagster").url == "postgresql://app:s3cret@db.internal:6543/dagster"


def test_dbt_gets_the_decoded_credentials_and_the_ssl_mode():
    # A password with URL-reserved characters is percent-encoded in the URL; dbt gets it as is.
    env = dbt_connection_env({"DATABASE_URL": "postgresql://etl%40corp:p%40ss%2Fw%3Ard@db:5432/xero?sslmode=require"})
    assert env["DBT_PG_USER"] == "etl@corp"
    assert env["DBT_PG_PASSWORD"] == "p@ss/w:rd"
    assert env["DBT_PG_SSLMODE"] == "require"
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        dbt_connection_env({})


def test_a_deployment_without_a_database_fails_instead_of_starting_an_embedded_one(tmp_path):
    env = {"XERO_ELT_EMBEDDED_POSTGRES": "0", "DAGSTER_HOME": str(tmp_path)}
    with pytest.raises(SettingsError, match="DATABASE_URL is required"):
        prepare_environment(env)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"XERO_PAGE_SIZE": "a lot"}, "XERO_PAGE_SIZE must be a whole number"),
        ({"XERO_PAGE_SIZE": "5000"}, "XERO_PAGE_SIZE must be between 1 and 1000"),
        ({"XERO_API_URL": "api.xero.com/api.xro/2.0"}, "XERO_API_URL must be an http(s) URL"),
        ({"XERO_MINUTE_LIMIT": "sixty"}, "XERO_MINUTE_LIMIT must be a whole number"),
        ({"XERO_DAY_RESERVE": "-1"}, "XERO_DAY_RESERVE must be between 0 and 5000"),
        ({"XERO_RATE_WINDOW_SECONDS": "0"}, "XERO_RATE_WINDOW_SECONDS must be between 1 and 3600"),
        ({"XERO_MAX_RETRIES_PER_RUN": "many"}, "XERO_MAX_RETRIES_PER_RUN must be a whole number"),
    ],
)
def test_source_settings_errors_name_the_variable(variables, message):
    from xero_source import SourceSettings

    with pytest.raises(ValueError) as err:
        SourceSettings.from_env(variables)
    assert message in str(err.value)


def test_prepare_environment_uses_a_given_database(database_url, tmp_path):
    env = {"DATABASE_URL": database_url, "DAGSTER_HOME": str(tmp_path / "dagster")}
    db = prepare_environment(env)
    assert db.url == DatabaseUrl.parse(database_url).url
    dagster_db = f"{db.database}_dagster"
    assert env["DAGSTER_POSTGRES_URL"] == db.with_database(dagster_db).in_utc().url.replace(
        "postgresql://", "postgresql+psycopg2://")
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dagster_db)))
    assert (tmp_path / "dagster" / "dagster.yaml").exists()
    assert env["RUNTIME__DLTHUB_TELEMETRY"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["DBT_PG_DATABASE"] == db.database


def test_dagsters_storage_keeps_run_times_right_on_a_server_not_in_utc(create_database, tmp_path):
    """Dagster stores run times as CURRENT_TIMESTAMP without a zone and reads them as UTC. On a
    database whose default zone is west of UTC a new run looked 8 hours old: run monitoring failed
    it for taking too long to start, and the crash reaper took it for dead."""
    import time

    import dagster as dg

    dagster_url = create_database("dagster")
    with psycopg.connect(dagster_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'America/Los_Angeles'").format(
            sql.Identifier(name)))
    env = {"DATABASE_URL": dagster_url, "DAGSTER_POSTGRES_URL": dagster_url,
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    prepare_environment(env)
    with psycopg.connect(env["DAGSTER_POSTGRES_URL"].replace("+psycopg2", "")) as conn:
        assert conn.execute("SHOW timezone").fetchone()[0] == "UTC"
    with psycopg.connect(dagster_url) as conn:  # anyone else's session keeps the server's zone
        assert conn.execute("SHOW timezone").fetchone()[0] == "America/Los_Angeles"

    from dagster._core.test_utils import environ

    with environ(env):
        instance = dg.DagsterInstance.get()
        try:
            run = instance.create_run_for_job(dg.GraphDefinition(name="noop", node_defs=[]).to_job())
            [record] = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))
            assert abs(record.create_timestamp.timestamp() - time.time()) < 60
            assert abs(record.update_timestamp.timestamp() - time.time()) < 60
        finally:
            instance.dispose()


def test_prepare_environment_rejects_a_bad_dagster_url(database_url, tmp_path):
    env = {"DATABASE_URL": database_url, "DAGSTER_HOME": str(tmp_path), "DAGSTER_POSTGRES_URL": "sqlite:///x"}
    with pytest.raises(SettingsError, match="DAGSTER_POSTGRES_URL"):
        prepare_environment(env)


def test_the_pipeline_reads_vault_settings_without_the_services_web_settings(database_url):
    from oauth_service.settings import Settings, generate_key

    env = {"DATABASE_URL": database_url, "TOKEN_ENCRYPTION_KEY": generate_key(),
           "XERO_CLIENT_ID": "id", "XERO_CLIENT_SECRET": "secret"}
    vault_settings = Settings.from_env(env, for_service=False)
    assert vault_settings.auth_jwt_secret is None and vault_settings.xero_client_id == "id"
    with pytest.raises(SettingsError) as err:  # the HTTP service itself still refuses to start
        Settings.from_env(env)
    for variable in ("XERO_REDIRECT_URI", "AUTH_JWT_SECRET", "APP_RETURN_URL"):
        assert variable in str(err.value)


def test_the_sync_concurrency_is_bounded_by_xeros_limits():
    from orchestration.settings import SYNC_CONCURRENCY, sync_concurrency

    assert sync_concurrency(environ={}) == max(2, len(os.sched_getaffinity(0)))  # the cores, at least 2
    assert sync_concurrency(environ={SYNC_CONCURRENCY: "12"}) == 12
    assert sync_concurrency(3, environ={SYNC_CONCURRENCY: "12"}) == 3  # the command line wins
    assert sync_concurrency(166, environ={}) == 166  # 10,000 calls a minute / 60 per tenant
    for bad in (0, -1, 167):
        with pytest.raises(SettingsError, match=r"from 1 to 166 .*not '" + str(bad)):
            sync_concurrency(bad, environ={})
    with pytest.raises(SettingsError, match="XERO_SYNC_CONCURRENCY"):
        sync_concurrency(environ={SYNC_CONCURRENCY: "many"})


def test_xeros_limits_come_from_settings():
    from orchestration.settings import app_minute_limit
    from xero_source import SourceSettings

    settings = SourceSettings.from_env({})
    assert (settings.minute_limit, settings.minute_margin, settings.rate_window_seconds,
            settings.day_reserve, settings.max_retries_per_run) == (60, 2, 60, 250, 60)
    fast = SourceSettings.from_env({"XERO_MINUTE_LIMIT": "2", "XERO_RATE_WINDOW_SECONDS": "10",
                                    "XERO_DAY_RESERVE": "0"})
    assert (fast.minute_limit, fast.minute_margin, fast.rate_window_seconds) == (2, 1, 10)
    assert fast.day_reserve == 0
    assert app_minute_limit(environ={}) == 10_000
    assert app_minute_limit(environ={"XERO_APP_MINUTE_LIMIT": "500"}) == 500
    for bad in ("0", "10001", "lots"):
        with pytest.raises(SettingsError, match=f"XERO_APP_MINUTE_LIMIT must be .*'{bad}'"):
            app_minute_limit(environ={"XERO_APP_MINUTE_LIMIT": bad})


def test_the_daily_sync_time_and_zone_come_from_settings():
    import subprocess
    import sys

    from orchestration.settings import sync_schedule, webhook_quiet_seconds

    assert sync_schedule(environ={}) == ("0 2 * * *", "UTC")
    sydney = {"XERO_SYNC_SCHEDULE": "30 1 * * *", "XERO_SYNC_TIMEZONE": "Australia/Sydney"}
    assert sync_schedule(environ=sydney) == ("30 1 * * *", "Australia/Sydney")
    with pytest.raises(SettingsError, match="XERO_SYNC_SCHEDULE must be a cron expression.*'at two'"):
        sync_schedule(environ={"XERO_SYNC_SCHEDULE": "at two"})
    with pytest.raises(SettingsError, match="XERO_SYNC_TIMEZONE must be an IANA time zone.*'Sydney'"):
        sync_schedule(environ={"XERO_SYNC_TIMEZONE": "Sydney"})
    assert webhook_quiet_seconds(environ={}) == 120
    assert webhook_quiet_seconds(environ={"XERO_WEBHOOK_QUIET_SECONDS": "15"}) == 15
    with pytest.raises(SettingsError, match="XERO_WEBHOOK_QUIET_SECONDS"):
        webhook_quiet_seconds(environ={"XERO_WEBHOOK_QUIET_SECONDS": "soon"})

    # The schedule the daemon runs is the configured one.
    code = ("from orchestration.definitions import defs; s = defs.resolve_schedule_def('daily_tenant_sync'); "
            "print(s.cron_schedule, s.execution_timezone)")
    env = {**os.environ, "XERO_SYNC_SCHEDULE": "15 3 * * 1-5", "XERO_SYNC_TIMEZONE": "Pacific/Auckland"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[-2] == "15 3 * * 1-5 Pacific/Auckland", done.stderr[-2000:]


def test_whole_number_settings_are_read_and_refused_in_one_way(monkeypatch):
    from oauth_service.settings import whole_number
    from orchestration.locks import TENANT_LOCK_WAIT, wait_seconds

    assert whole_number({}, "X", 7) == 7 and whole_number({"X": " "}, "X", 7) == 7
    assert whole_number({"X": "0"}, "X", 7) == 0 and whole_number({"X": "12"}, "X", 7, low=1, high=12) == 12
    for bad, said in (("-1", "X must be a whole number of seconds from 1 to 12, not '-1'"),
                      ("13", "X must be a whole number of seconds from 1 to 12, not '13'"),
                      ("1.5", "X must be a whole number of seconds from 1 to 12, not '1.5'"),
                      ("soon", "X must be a whole number of seconds from 1 to 12, not 'soon'")):
        with pytest.raises(SettingsError) as err:
            whole_number({"X": bad}, "X", 7, low=1, high=12, unit="seconds")
        assert str(err.value) == said
    monkeypatch.setenv(TENANT_LOCK_WAIT, "forever")
    with pytest.raises(SettingsError, match=f"{TENANT_LOCK_WAIT} must be a whole number of seconds"):
        wait_seconds(TENANT_LOCK_WAIT)
