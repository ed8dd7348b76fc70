"""Running the service: `ServiceServer` (uvicorn in a background thread) and `serve` (blocking).

In DEMO_MODE both listen on loopback only: the demo's JWT secret is public.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from oauth_service.app import create_app
from oauth_service.settings import Settings, SettingsError, is_loopback_host

log = logging.getLogger("oauth_service.server")


def _check_host(settings: Settings, host: str) -> None:
    if settings.demo_mode and not is_loopback_host(host):
        raise SettingsError(
            f"DEMO_MODE=1 listens on loopback only (127.0.0.1, ::1 or localhost), not {host!r}: its JWT "
            "secret and client credentials are public"
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app, *, log_level: str) -> uvicorn.Config:
    # access_log off: uvicorn's access log prints query strings (OAuth codes); the app logs paths only.
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


class ServiceServer:
    """The OAuth service on a background thread; `.url` once entered.

        with ServiceServer(settings, port=0) as srv:
            requests.get(srv.url + "/healthz")

    When `settings.xero_redirect_uri` is unset (allowed in demo mode), the callback URL of this
    server is used.
    """

    def __init__(
        self, settings: Settings, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
    ):
        self.settings = settings
        self.host = host
        self.port = port
        self.log_level = log_level
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.app = None

    def start(self) -> ServiceServer:
        _check_host(self.settings, self.host)
        self._sock = _bind(self.host, self.port)
        port = self._sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.port = port
        self.url = f"http://{host}:{port}"
        settings = self.settings
        if not settings.xero_redirect_uri:
            settings = settings.replace(xero_redirect_uri=f"{self.url}/xero/auth/callback")
        self.settings = settings
        self.app = create_app(settings)
        self._server = uvicorn.Server(_uvicorn_config(self.app, log_level=self.log_level))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"oauth-service-{port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the OAuth service failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the OAuth service did not start within 30 seconds")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ServiceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    settings: Settings | None = None,
    host: str | None = None,
    port: int = 8080,
    *,
    log_level: str = "info",
) -> None:
    """Run the service in the foreground until interrupted (`xero-elt serve --port P`). `host` None:
    all interfaces (a container's service), or loopback in DEMO_MODE."""
    settings = settings or Settings.from_env()
    if host is None:
        host = "127.0.0.1" if settings.demo_mode else "0.0.0.0"  # noqa: S104
    _check_host(settings, host)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    if not settings.xero_redirect_uri:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        settings = settings.replace(xero_redirect_uri=f"http://{shown}:{bound}/xero/auth/callback")
    app = create_app(settings)
    log.info("OAuth service listening on %s:%d (docs at /docs)", host, bound)
    server = uvicorn.Server(_uvicorn_config(app, log_level=log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
