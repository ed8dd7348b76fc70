# syntax=docker/dockerfile:1
# One image for every process of xero-elt, chosen by command (compose.yaml runs them all):
#   xero-elt serve --port 8080   the OAuth service (the default command)
#   xero-elt migrate             app schema, the service's login, Dagster's storage; then exits
#   xero-elt code-server         the Dagster code location over gRPC (:4000); the runs are launched in it
#   xero-elt webserver           the Dagster UI (:3000), given XERO_ELT_CODE_SERVER=host:4000
#   xero-elt daemon              schedules, sensors, the run queue, run monitoring (same variable)
# It runs as a non-root user on a read-only root filesystem: it writes only to DAGSTER_HOME (a volume
# shared by the Dagster processes: the instance file and the runs' logs) and /tmp (a tmpfs: dlt's and
# dbt's working folders). The dbt manifest is built here and used as is.
#
# Configuration comes from the environment (or AWS Secrets Manager: <VAR>_SECRET_ID), never from the image:
#   OAuth service: APP_DATABASE_URL (its own login, owner of nothing; DATABASE_URL may be the same
#                  URL: the service never needs the owner's), TOKEN_ENCRYPTION_KEY, XERO_*, AUTH_*, APP_*.
#   Code server:   DATABASE_URL (owner of raw_xero/analytics), APP_DATABASE_URL (the token vault's
#                  login), TOKEN_ENCRYPTION_KEY, XERO_CLIENT_ID/SECRET, XERO_*_URL, and Dagster's storage:
#                  DAGSTER_POSTGRES_URL (default: database <database>_dagster on the same server; its
#                  sessions are put in UTC and its driver named psycopg2 by the commands).
#   Webserver, daemon: DAGSTER_POSTGRES_URL and XERO_ELT_CODE_SERVER only: they run none of the
#                  product's code, so they get neither its database nor its secrets.
#
# Python packages: deploy/requirements.lock (every runtime package at the version the tests ran,
# generated from the venv by deploy/lock_requirements.py), installed with --no-deps from wheels only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: the venv and the manifest
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DO_NOT_TRACK=1 \
    RUNTIME__DLTHUB_TELEMETRY=false \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DAGSTER_DISABLE_TELEMETRY=1

# Its own layer, rebuilt only when the lock changes. Exactly the lock (--no-deps: nothing unlisted
# comes in) and wheels only (nothing is compiled, so no compiler is needed here either).
COPY deploy/requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements.lock

WORKDIR /app
COPY pyproject.toml README.md workspace.yaml ./
COPY deploy/dagster.yaml deploy/code_server_workspace.yaml ./deploy/
COPY deploy/aws/dagster.yaml ./deploy/aws/
COPY oauth_service ./oauth_service
COPY xero_source ./xero_source
COPY orchestration ./orchestration
COPY xero_sandbox ./xero_sandbox
COPY dbt_project ./dbt_project

# Editable and without dependencies: the code stays in /app, beside dbt_project/ and deploy/ (where
# orchestration/settings.py looks for them), and the console scripts xero-elt and xero-elt-dbt are made;
# built by the locked setuptools (a dependency of dlt), so offline too.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e . \
    # @dbt_assets reads the manifest at import time: built now, then used as is (read-only /app).
    && /opt/venv/bin/dbt parse --project-dir dbt_project --profiles-dir dbt_project --target-path target \
        --log-path /tmp/dbt-logs --quiet \
    # The definitions load from it (ensure_manifest finds it fresh and writes nothing).
    && /opt/venv/bin/python -c "import orchestration.definitions" \
    && /opt/venv/bin/python -m compileall -q oauth_service xero_source orchestration xero_sandbox \
    # The installer is not needed at run time.
    && /opt/venv/bin/python -m pip uninstall -y -q pip

# ---------------------------------------------------------------- runtime: no compiler, no installer
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    RUNTIME__DLTHUB_TELEMETRY=false \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DAGSTER_DISABLE_TELEMETRY=1 \
    XERO_ELT_EMBEDDED_POSTGRES=0 \
    DAGSTER_HOME=/var/lib/dagster \
    XERO_ELT_DAGSTER_YAML=/app/deploy/dagster.yaml \
    DLT_DATA_DIR=/tmp/dlt \
    DBT_TARGET_PATH=/tmp/dbt/target \
    DBT_LOG_PATH=/tmp/dbt/logs \
    XERO_ELT_LOCAL_DIR=/tmp/xero-elt \
    HOME=/tmp

# The user owns nothing but DAGSTER_HOME (a named volume mounted there starts with this owner).
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/dagster && chown app:app /var/lib/dagster
# The writable places of the read-only image. On ECS Fargate a task volume mounted at a VOLUME path
# starts with the image's owner and mode there (so the app user can write /var/lib/dagster).
VOLUME ["/tmp", "/var/lib/dagster"]

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# COPY keeps modification times, so the manifest is still newer than the models: were it not, the
# code would try to rebuild it in /app at start, and fail on the read-only filesystem.
RUN python -c "from orchestration.dbt_project import _is_fresh, xero_dbt_project as p; \
assert _is_fresh(p.manifest_path, p.project_dir), 'stale dbt manifest'"

USER 10001:10001
EXPOSE 8080 3000 4000
# Checks whatever this container runs (read from its process 1): `xero-elt health --help`.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 CMD ["xero-elt", "health"]
CMD ["xero-elt", "serve", "--port", "8080"]
