"""The Dagster code location: thin on purpose; each concern lives in its own module."""

import dagster as dg

from oauth_service.secret_source import apply_secrets
from orchestration.assets.analytics import analytics_models
from orchestration.assets.xero_raw import xero_raw_assets
from orchestration.jobs import analytics_job, tenant_sync_job
from orchestration.resources import build_resources
from orchestration.schedules import daily_tenant_sync
from orchestration.sensors import (
    analytics_after_extracts,
    audit_canceled_runs,
    audit_failed_runs,
    audit_successful_runs,
    recover_crashed_runs,
    tenant_connections_sensor,
    xero_webhook_sensor,
)

# A code server and each run worker (a process per run) read the secrets the deployment names
# (see oauth_service/secret_source.py) before any resource, sensor or step uses a setting.
apply_secrets()

defs = dg.Definitions(
    assets=[xero_raw_assets, analytics_models],
    jobs=[tenant_sync_job, analytics_job],
    schedules=[daily_tenant_sync],
    sensors=[tenant_connections_sensor, xero_webhook_sensor, analytics_after_extracts, recover_crashed_runs,
             audit_successful_runs, audit_failed_runs, audit_canceled_runs],
    resources=build_resources(),
)
