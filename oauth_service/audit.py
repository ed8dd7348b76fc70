"""Audit writer for `app.audit_log` (append-only; the database rejects UPDATE, DELETE, TRUNCATE).

`record_audit` is a plain library function used by the service, the token vault and the
orchestration (e.g. `sync_run_started/succeeded/failed`). It never stores a token or a secret:
metadata keys that name one, and values that look like one, are replaced by "[redacted]".
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("oauth_service.audit")

REDACTED = "[redacted]"
OUTCOMES = ("success", "failure", "denied")

_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|pwd|authorization|auth_header|api[_-]?key|private[_-]?key|"
    r"client[_-]?secret|code[_-]?verifier|cookie|credential|signature|^code$|^key$|bearer)",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"\bbearer\s+\S+", re.IGNORECASE)
_FERNET = re.compile(r"\b(v1:)?gAAAAA[A-Za-z0-9_=-]{20,}")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A long unbroken run of token characters with letters and digits mixed: looks like a credential.
_OPAQUE = re.compile(r"^[A-Za-z0-9_\-+/=.~]{32,}$")


def _looks_secret(value: str) -> bool:
    if _UUID.match(value):
        return False
    if _JWT.search(value) or _BEARER.search(value) or _FERNET.search(value):
        return True
    return bool(_OPAQUE.match(value) and re.search(r"[0-9]", value) and re.search(r"[A-Za-z]", value))


def sanitize(value: Any, *, _depth: int = 0) -> Any:
    """A JSON-safe copy of `value` with anything token- or secret-like replaced by "[redacted]"."""
    if _depth > 8:
        return REDACTED
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            if _SECRET_KEY.search(key) and not key.endswith(("_count", "_type", "_expires_at")):
                out[key] = REDACTED if v not in (None, "") else v
            else:
                out[key] = sanitize(v, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [sanitize(v, _depth=_depth + 1) for v in value]
    if isinstance(value, str):
        return REDACTED if _looks_secret(value) else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    text_value = str(value)
    return REDACTED if _looks_secret(text_value) else text_value


def clean_ip(ip_address: str | None) -> str | None:
    """`ip_address` normalised, or None when it is not an IP address (the column is INET)."""
    if not ip_address:
        return None
    try:
        return str(ipaddress.ip_address(str(ip_address).strip()))
    except ValueError:
        return None


def _clean_user(user_id: Any, metadata: dict[str, Any]) -> str | None:
    if user_id is None or user_id == "":
        return None
    try:
        return str(uuid.UUID(str(user_id)))
    except ValueError:
        # A process or service account (e.g. "dagster"): kept as the actor in metadata.
        metadata.setdefault("actor", sanitize(str(user_id)))
        return None


_INSERT = text(
    """
    INSERT INTO app.audit_log
        (user_id, action, table_accessed, record_id, tenant_id, outcome, metadata, ip_address)
    VALUES
        (:user_id, :action, :table_accessed, :record_id, :tenant_id, :outcome,
         CAST(:metadata AS jsonb), CAST(:ip_address AS inet))
    RETURNING id
    """
)


def record_audit(
    conn_or_engine: Connection | Engine,
    action: str,
    *,
    user_id: Any = None,
    tenant_id: str | None = None,
    table_accessed: str | None = None,
    record_id: Any = None,
    ip_address: str | None = None,
    outcome: str = "success",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Append one row to `app.audit_log` and return its id.

    Given a Connection, the row is written in that connection's transaction (committed or rolled
    back with it); given an Engine, in a transaction of its own.
    """
    if not action or len(action) > 100:
        raise ValueError("audit action must be a non-empty string of at most 100 characters")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, got {outcome!r}")
    clean_meta: dict[str, Any] = sanitize(dict(metadata or {}))
    params = {
        "user_id": _clean_user(user_id, clean_meta),
        "action": action,
        "table_accessed": table_accessed,
        "record_id": None if record_id is None else sanitize(str(record_id)),
        "tenant_id": tenant_id,
        "outcome": outcome,
        "metadata": json.dumps(clean_meta, default=str),
        "ip_address": clean_ip(ip_address),
    }
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.begin() as conn:
            row_id = conn.execute(_INSERT, params).scalar_one()
    else:
        row_id = conn_or_engine.execute(_INSERT, params).scalar_one()
    return str(row_id)


class AnonymousAuditLimiter:
    """Bounded auditing of anonymous rejections (bad webhook signatures, callbacks with no valid state).

    They are still audited, but per (action, source IP) and clock minute only the first `per_minute`
    get a row each; the rest are counted, and when that minute is over one summary row records how
    many were left out (`metadata.suppressed`, `metadata.aggregated = true`). So an anonymous client
    can add at most `per_minute + 1` rows per minute per action. Authenticated actions and good
    signatures never pass through here: they are audited every time.

    Summaries are written lazily (on the next rejection of any source) and by `flush()` (the service
    calls it at shutdown). At most `max_sources` windows are tracked; beyond that the remaining
    sources share one window without an IP.
    """

    def __init__(
        self,
        engine: Engine,
        per_minute: int = 10,
        *,
        clock: Any = None,
        max_sources: int = 10_000,
    ):
        import threading
        import time

        self.engine = engine
        self.per_minute = max(1, int(per_minute))
        self.clock = clock or time.time
        self.max_sources = max_sources
        self._lock = threading.Lock()
        # (action, ip) -> [minute, audited, suppressed, template kwargs of the first suppressed]
        self._windows: dict[tuple[str, str | None], list[Any]] = {}

    def record(
        self,
        action: str,
        *,
        ip_address: str | None,
        outcome: str = "denied",
        **kwargs: Any,
    ) -> bool:
        """Audit one anonymous rejection; True when it got its own row, False when only counted."""
        minute = int(self.clock() // 60)
        ip = clean_ip(ip_address)
        with self._lock:
            due = self._take_expired(minute)
            key = (action, ip)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.max_sources:
                    key = (action, None)
                    window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = [minute, 0, 0, None]
            if window[1] < self.per_minute:
                window[1] += 1
                own_row = True
            else:
                window[2] += 1
                own_row = False
                if window[3] is None:
                    window[3] = {"outcome": outcome, "ip": key[1], **kwargs}
                    log.warning(
                        "more than %d anonymous %s rejections from %s this minute: counting the rest into "
                        "one audit row",
                        self.per_minute,
                        action,
                        key[1] or "many sources",
                    )
        self._write_summaries(due)
        if own_row:
            record_audit(self.engine, action, ip_address=ip, outcome=outcome, **kwargs)
        return own_row

    def flush(self) -> int:
        """Write the summaries of every window (also the current minute's); returns how many rows."""
        with self._lock:
            due = self._take_expired(None)
        return self._write_summaries(due)

    def _take_expired(self, minute: int | None) -> list[tuple[str, list[Any]]]:
        due = []
        for key in [k for k, w in self._windows.items() if minute is None or w[0] < minute]:
            window = self._windows.pop(key)
            if window[2]:
                due.append((key[0], window))
        return due

    def _write_summaries(self, due: list[tuple[str, list[Any]]]) -> int:
        from datetime import UTC, datetime

        for action, (minute, audited, suppressed, template) in due:
            template = dict(template or {})
            ip = template.pop("ip", None)
            outcome = template.pop("outcome", "denied")
            metadata = dict(template.pop("metadata", None) or {})
            metadata.update(
                {
                    "aggregated": True,
                    "suppressed": suppressed,
                    "audited_individually": audited,
                    "window_start": datetime.fromtimestamp(minute * 60, UTC).isoformat(),
                    "window_seconds": 60,
                }
            )
            try:
                record_audit(
                    self.engine, action, ip_address=ip, outcome=outcome, metadata=metadata, **template
                )
            except Exception:  # noqa: BLE001 - never lose the request over a summary
                log.exception("could not write the audit summary of %d %s rejections", suppressed, action)
        return len(due)
