"""AWS Lambda entry point (behind API Gateway), like the prototype's `xero-oauth-handler`.

Handler: `oauth_service.lambda_handler.handler`. Settings come from the function's environment, once
`apply_secrets` has set those given as secret ids (`V_SECRET_ID`, see oauth_service.secret_source).
The ASGI app is built on the first event. Each event applies the secrets again (from the cache: AWS is
read only once their TTL has passed); when a value has changed (a rotation) the app is rebuilt with the
new settings and a new database engine, and the old engine is disposed. DEMO_MODE is refused: it is
for one machine's loopback only.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi import FastAPI
from mangum import Mangum

from oauth_service.app import create_app
from oauth_service.secret_source import apply_secrets
from oauth_service.settings import Settings, SettingsError

log = logging.getLogger("oauth_service.lambda_handler")

_adapter: Mangum | None = None
_built_from: dict[str, str] = {}  # the values read from secrets that the current app was built with
_lock = threading.Lock()


def _get_adapter() -> Mangum:
    global _adapter, _built_from
    with _lock:
        secret_values = {name: os.environ[name] for name in apply_secrets()}
        if _adapter is None or secret_values != _built_from:
            if _adapter is not None:
                changed = [name for name, value in secret_values.items() if _built_from.get(name) != value]
                log.info("secret settings changed (%s): rebuilding the app", ", ".join(changed))
            previous = _adapter
            _adapter = Mangum(_build_app(), lifespan="off")
            _built_from = secret_values
            if previous is not None:
                _retire(previous.app)
        return _adapter


def _build_app() -> FastAPI:
    settings = Settings.from_env()
    if settings.demo_mode:
        raise SettingsError("DEMO_MODE=1 is for the local demo on loopback, never on Lambda")
    return create_app(settings)


def _retire(app: FastAPI) -> None:
    """The app's lifespan shutdown, which Mangum (lifespan="off") never runs: write the pending audit
    summaries, then close the old engine's connections (their login may be the rotated one)."""
    try:
        app.state.anonymous_audit.flush()
    except Exception as exc:  # noqa: BLE001 - the old password may no longer be accepted
        log.warning("the replaced app's anonymous audit summaries were not written: %s", type(exc).__name__)
    app.state.engine.dispose()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _get_adapter()(event, context)
