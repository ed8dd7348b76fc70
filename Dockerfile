# One image for the OAuth service (default command) and the Dagster code location / daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    RUNTIME__DLTHUB_TELEMETRY=false \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    DAGSTER_HOME=/app/.dagster

WORKDIR /app
RUN useradd --create-home --uid 10001 app

COPY pyproject.toml README.md workspace.yaml ./
COPY oauth_service ./oauth_service
COPY xero_source ./xero_source
COPY orchestration ./orchestration
COPY xero_sandbox ./xero_sandbox
COPY dbt_project ./dbt_project
COPY deploy ./deploy

RUN pip install --no-cache-dir -e . \
    && mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    # @dbt_assets reads the manifest at import: build it into the image.
    && dbt parse --project-dir dbt_project --profiles-dir dbt_project --quiet \
    && chown -R app:app /app

USER app
EXPOSE 8080
# DATABASE_URL, TOKEN_ENCRYPTION_KEY, XERO_* and AUTH_* come from the environment (secrets manager).
# The same image runs the Dagster side with another command:
#   dagster-webserver -w workspace.yaml -h 0.0.0.0 -p 3000      (UI; needs DAGSTER_POSTGRES_URL)
#   dagster-daemon run -w workspace.yaml                           (schedules, sensors, run queue)
#   dagster code-server start -m orchestration.definitions -h 0.0.0.0 -p 4000
CMD ["xero-elt", "serve", "--port", "8080"]
