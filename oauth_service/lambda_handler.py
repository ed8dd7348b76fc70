"""AWS Lambda entry point (behind API Gateway), like the prototype's `xero-oauth-handler`.

Handler: `oauth_service.lambda_handler.handler`. Settings come from the function's environment;
the ASGI app is built once per container, on the first event. DEMO_MODE is refused: it is for one
machine's loopback only.
"""

from __future__ import annotations

import threading
from typing import Any

from mangum import Mangum

from oauth_service.app import create_app
from oauth_service.settings import Settings, SettingsError

_adapter: Mangum | None = None
_lock = threading.Lock()


def _get_adapter() -> Mangum:
    global _adapter
    if _adapter is None:
        with _lock:
            if _adapter is None:
                settings = Settings.from_env()
                if settings.demo_mode:
                    raise SettingsError("DEMO_MODE=1 is for the local demo on loopback, never on Lambda")
                _adapter = Mangum(create_app(settings), lifespan="off")
    return _adapter


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _get_adapter()(event, context)
