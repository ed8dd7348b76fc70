"""Watches the whole test run for tokens in clear: every log record any test emits (root logger, INFO
and up, from the first test to the last), the output of every command the tests run, the Dagster
event logs of the pipeline tests, and the files the run leaves (Dagster homes, dlt and dbt logs).
At the end of the session (of each worker's, when tests run in parallel) `tests/conftest.py`
looks in all of it for every token and authorization code any sandbox handed out (`leaks`)."""

from __future__ import annotations

import logging
import re
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


# Sandbox tokens are JWTs (base64url and dots) or URL-safe base64: any run of these characters.
CANDIDATE = re.compile(r"[A-Za-z0-9_\-.]{16,}")


def find_leaks(secrets: set[str], places: dict[str, str]) -> list[tuple[str, str]]:
    """(where, the secret's first 8 characters) for each secret found in a place's text."""
    return sorted((where, token[:8] + "…") for where, text in places.items()
                  for token in set(CANDIDATE.findall(text)) & secrets)


def leaks(*roots: Path) -> list[tuple[str, str]]:
    """Every token the run's sandboxes issued that appears in clear in what the run logged and
    printed, or in a file under `roots`."""
    secrets = issued_secrets()
    if not secrets:
        return []
    if not SINK.lines:
        return [("log records and command output", "the capture captured nothing")]
    places = {"log records and command output": "\n".join(SINK.lines)}
    places.update({str(path): text for path, text in leftover_text(*roots).items()})
    return find_leaks(secrets, places)
