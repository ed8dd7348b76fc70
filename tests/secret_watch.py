"""Watches the whole test run for tokens in clear: every log record any test emits (root logger, INFO
and up, from the first test to the last), the output of every command the tests run, the Dagster
event logs of the pipeline tests, and the files the run leaves (Dagster homes, dlt and dbt logs).
`tests/test_zz_no_token_in_clear.py`, the last test of a run, looks in all of it for every token
and authorization code any sandbox handed out during the run."""

from __future__ import annotations

import logging
from pathlib import Path

from xero_sandbox import SandboxServer

# The tests' browser stand-in (httpx) logs the callback URL it follows, code included, as a browser's
# history holds it: that is the user's browser, not the product (which talks to Xero through
# requests/urllib3, whose records are all kept).
_BROWSER_LOGGERS = ("httpx", "httpcore")


class LogSink(logging.Handler):
    """Keeps every record's text (exceptions included) to be searched for secrets."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level=level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_BROWSER_LOGGERS) and "/xero/auth/callback?" in record.getMessage():
            return
        try:
            line = f"{record.name} {record.levelname} {record.getMessage()}"
            if record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception as exc:  # noqa: BLE001 - never break logging
            line = f"{record.name} unformattable record: {exc}"
        self.lines.append(line)


SINK = LogSink()
_SANDBOXES: list[SandboxServer] = []


def record(text: str) -> None:
    """Add what a command printed (the tests capture it) to what is searched at the end."""
    SINK.lines.extend(text.splitlines())


def start() -> None:
    root = logging.getLogger()
    root.addHandler(SINK)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # what a deployment logs
    starting = SandboxServer.start  # `with SandboxServer(...)` and the pytest fixtures both start

    def remember(self: SandboxServer) -> SandboxServer:
        _SANDBOXES.append(self)
        return starting(self)

    SandboxServer.start = remember  # type: ignore[method-assign]


def issued_secrets() -> set[str]:
    """Every access token, refresh token and authorization code the run's sandboxes issued."""
    found: set[str] = set()
    for server in _SANDBOXES:
        identity = server.sandbox.identity
        with identity.lock:
            found.update(identity.access)
            found.update(identity.refresh)
            found.update(identity.codes)
    return {s for s in found if isinstance(s, str) and len(s) >= 16}


def leftover_text(*roots: Path, max_bytes: int = 5_000_000) -> dict[Path, str]:
    """Text of the files under `roots` (logs, Dagster storage, dlt working folders)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size <= max_bytes:
                try:
                    out[path] = path.read_text(errors="ignore")
                except OSError:
                    continue
    return out
