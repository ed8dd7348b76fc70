# One image for the OAuth service (default command) and the Dagster code location / daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    RUNTIME__DLTHUB_TELEMETRY=false \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DAGSTER_HOME=/app/.dagster \
    XERO_ELT_EMBEDDED_POSTGRES=0

WORKDIR /app
RUN useradd --create-home --uid 10001 app

COPY pyproject.toml README.md workspace.yaml ./
COPY oauth_service ./oauth_service
COPY xero_source ./xero_source
COPY orchestration ./orchestration
COPY xero_sandbox ./xero_sandbox
COPY dbt_project ./dbt_project
COPY deploy ./deploy

# Editable: the code finds dbt_project/ and deploy/ beside itself in /app.
RUN pip install --no-cache-dir -e . \
    && mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    # @dbt_assets reads the manifest at import: build it into the image.
    && dbt parse --project-dir dbt_project --profiles-dir dbt_project --quiet \
    && chown -R app:app /app

USER app
EXPOSE 8080
# Configuration comes from the environment (secrets manager), never from the image:
#   OAuth service: APP_DATABASE_URL (its own login, owner of nothing; DATABASE_URL may be the same
#                  URL: the service never needs the owner's), TOKEN_ENCRYPTION_KEY, XERO_*, AUTH_*, APP_*.
#   Dagster side:  DATABASE_URL (owner of raw_xero/analytics), APP_DATABASE_URL (the token vault's
#                  login), TOKEN_ENCRYPTION_KEY, XERO_CLIENT_ID/SECRET, XERO_*_URL and
#                  DAGSTER_POSTGRES_URL=postgresql+psycopg2://user:pass@host/dagster (psycopg2 named:
#                  dagster-postgres needs it). dbt's connection is derived from DATABASE_URL.
# The same image runs the Dagster side with another command:
#   dagster-webserver -w workspace.yaml -h 0.0.0.0 -p 3000      (UI)
#   dagster-daemon run -w workspace.yaml                           (schedules, sensors, run queue)
CMD ["xero-elt", "serve", "--port", "8080"]
