"""Xero's API rate limits on the sandbox clock.

Per tenant: concurrent calls in flight, a rolling 60-second window and a rolling 24-hour window; per app
(client id) across tenants: a rolling 60-second window. A rejected call does not consume quota. Every
answer carries the ``X-*Limit-Remaining`` headers; a 429 adds ``Retry-After`` and ``X-Rate-Limit-Problem``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

from .clock import SandboxClock
from .config import LimitConfig

MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass
class _Window:
    span_ms: int
    calls: deque = field(default_factory=deque)

    def trim(self, now: int) -> None:
        while self.calls and self.calls[0] <= now - self.span_ms:
            self.calls.popleft()

    def retry_after_ms(self, now: int, limit: int) -> int:
        # The call that must expire before a slot frees up.
        oldest = self.calls[len(self.calls) - limit]
        return max(1, oldest + self.span_ms - now)


@dataclass
class Decision:
    allowed: bool
    headers: dict[str, str]
    problem: str | None = None
    retry_after: int | None = None
    at_ms: int = 0  # when an admitted call was counted


class RateLimiter:
    def __init__(self, limits: LimitConfig, clock: SandboxClock) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._minute: dict[str, _Window] = {}
        self._day: dict[str, _Window] = {}
        self._app: dict[str, _Window] = {}
        self._inflight: dict[str, int] = {}

    def _w(self, table: dict[str, _Window], key: str, span: int) -> _Window:
        w = table.get(key)
        if w is None:
            w = table[key] = _Window(span)
        return w

    def _headers(self, tenant: str, app: str, now: int) -> dict[str, str]:
        lim = self.limits
        out = {}
        if lim.per_day is not None:
            d = self._w(self._day, tenant, DAY_MS)
            d.trim(now)
            out["X-DayLimit-Remaining"] = str(max(0, lim.per_day - len(d.calls)))
        if lim.per_minute is not None:
            m = self._w(self._minute, tenant, MINUTE_MS)
            m.trim(now)
            out["X-MinLimit-Remaining"] = str(max(0, lim.per_minute - len(m.calls)))
        if lim.app_per_minute is not None:
            a = self._w(self._app, app, MINUTE_MS)
            a.trim(now)
            out["X-AppMinLimit-Remaining"] = str(max(0, lim.app_per_minute - len(a.calls)))
        return out

    def acquire(self, tenant: str, app: str) -> Decision:
        """Admit a call (counting it and marking it in flight) or refuse it with a 429 decision."""
        lim = self.limits
        with self._lock:
            now = self.clock.now_ms()
            headers = self._headers(tenant, app, now)
            problem: str | None = None
            wait_ms = 0
            # Order matters when several are exhausted: the day limit is the one worth reporting.
            if lim.per_day is not None and len(self._day[tenant].calls) >= lim.per_day:
                problem, wait_ms = "day", self._day[tenant].retry_after_ms(now, lim.per_day)
            elif lim.app_per_minute is not None and len(self._app[app].calls) >= lim.app_per_minute:
                problem, wait_ms = "appminute", self._app[app].retry_after_ms(now, lim.app_per_minute)
            elif lim.per_minute is not None and len(self._minute[tenant].calls) >= lim.per_minute:
                problem, wait_ms = "minute", self._minute[tenant].retry_after_ms(now, lim.per_minute)
            elif lim.concurrent is not None and self._inflight.get(tenant, 0) >= lim.concurrent:
                problem, wait_ms = "concurrent", 1000
            if problem is not None:
                seconds = wait_ms / 1000
                if lim.retry_after_wall_clock:
                    seconds = self.clock.to_wall_seconds(seconds)
                retry = max(1, math.ceil(seconds))
                headers.update({"Retry-After": str(retry), "X-Rate-Limit-Problem": problem})
                return Decision(False, headers, problem, retry)
            for table, key, limit in (
                (self._day, tenant, lim.per_day),
                (self._minute, tenant, lim.per_minute),
                (self._app, app, lim.app_per_minute),
            ):
                if limit is not None:
                    table[key].calls.append(now)
            self._inflight[tenant] = self._inflight.get(tenant, 0) + 1
            return Decision(True, self._headers(tenant, app, now), at_ms=now)

    def peek(self, tenant: str, app: str) -> dict[str, str]:
        """The X-*Limit-Remaining headers without counting a call (for answers refused before the limiter)."""
        with self._lock:
            return self._headers(tenant, app, self.clock.now_ms())

    def refund(self, tenant: str, app: str, at_ms: int) -> dict[str, str]:
        """Un-count an admitted call (an injected 429 consumes no quota, like a real one); returns headers."""
        lim = self.limits
        with self._lock:
            for table, key, limit in (
                (self._day, tenant, lim.per_day),
                (self._minute, tenant, lim.per_minute),
                (self._app, app, lim.app_per_minute),
            ):
                w = table.get(key)
                if limit is not None and w is not None and at_ms in w.calls:
                    w.calls.remove(at_ms)
            return self._headers(tenant, app, self.clock.now_ms())

    def release(self, tenant: str) -> None:
        with self._lock:
            self._inflight[tenant] = max(0, self._inflight.get(tenant, 0) - 1)

    def remaining(self, tenant: str, app: str) -> dict[str, int | None]:
        lim = self.limits
        with self._lock:
            h = self._headers(tenant, app, self.clock.now_ms())
        return {
            "day": int(h["X-DayLimit-Remaining"]) if "X-DayLimit-Remaining" in h else None,
            "minute": int(h["X-MinLimit-Remaining"]) if "X-MinLimit-Remaining" in h else None,
            "app_minute": int(h["X-AppMinLimit-Remaining"]) if "X-AppMinLimit-Remaining" in h else None,
            "concurrent": (
                None if lim.concurrent is None else lim.concurrent - self._inflight.get(tenant, 0)
            ),
        }

    def reset(self) -> None:
        with self._lock:
            self._minute.clear()
            self._day.clear()
            self._app.clear()
