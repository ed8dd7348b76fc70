"""Staying inside Xero's rate limits instead of running into them.

Xero allows, per tenant, 5 calls in flight, 60 a minute and 5,000 a day, and per app 10,000 a
minute across every tenant. Each answer says what is left (`X-MinLimit-Remaining`,
`X-DayLimit-Remaining`, `X-AppMinLimit-Remaining`); a 429 says how long to wait (`Retry-After`).

- `TenantPacer` keeps this tenant's own calls of the last (rolling) minute below the limit less a
  margin, and believes the headers when they say less is left (the web app, or another process,
  calls for the tenant too). It stops the run before the daily limit runs out, keeping a reserve
  for the web app's own calls.
- `AppBudget` is the app-wide minute, shared by every worker of every tenant. The source only
  knows its protocol; the orchestrator keeps it where all workers see it (PostgreSQL).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

from xero_source.errors import DailyLimitExceeded

log = logging.getLogger(__name__)

# What Xero says is left of each limit, on every answer (the names the run metadata uses).
LIMIT_HEADERS = {"X-MinLimit-Remaining": "minute_limit_left", "X-DayLimit-Remaining": "day_limit_left",
                 "X-AppMinLimit-Remaining": "app_minute_limit_left"}
# A call counts in Xero's window when it arrives, ours when it leaves: wait this much longer.
CLOCK_SLACK_SECONDS = 0.25


class AppBudget(Protocol):
    def acquire(self) -> None:
        """Block until one more call fits in the app's minute, then count it."""


class NoAppBudget:
    """One process alone: Xero's app-wide minute is left to the headers and Retry-After."""

    def acquire(self) -> None:
        return None


class TenantPacer:
    def __init__(self, tenant_id: str, per_minute: int, margin: int, window_seconds: float, day_reserve: int,
                 app_budget: AppBudget | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.tenant_id = tenant_id
        self.allowed = max(1, per_minute - margin)  # our own calls in any window
        self.margin = margin
        self.window = window_seconds
        self.day_reserve = day_reserve
        self.app_budget = app_budget or NoAppBudget()
        self.clock = clock
        self.sleep = sleep
        self.sent: deque[float] = deque()  # when each of our calls of the last window left
        self.left: dict[str, int] = {}  # the latest answer's X-*Limit-Remaining, by metadata name
        self.calls_sent = 0
        # Xero's daily calls left once every call sent so far has counted: the least that any
        # answer's X-DayLimit-Remaining leaves after the calls sent since (pages are fetched
        # ahead, so answers come out of order, and a header can lag a call made at the same time).
        self.day_left: int | None = None
        self.waited_seconds = 0.0
        self._lock = threading.Lock()
        self._answers = threading.Lock()

    def before_call(self, where: str) -> int:
        """Wait until a call fits this tenant's minute and the app's, then count it as sent and
        return its number (for `after_answer`). Resources page ahead in threads: one caller at a
        time (a waiter holds the others)."""
        with self._lock:
            return self._before_call(where)

    def _before_call(self, where: str) -> int:
        day_left = self.day_left
        if day_left is not None and day_left <= self.day_reserve:
            raise DailyLimitExceeded(
                f"Xero's daily call limit for {where} is down to {day_left} call(s), the reserve kept "
                f"for the web app (XERO_DAY_RESERVE={self.day_reserve}); the rest waits until the "
                "rolling 24-hour window frees calls", status=429)
        while True:
            now = self.clock()
            while self.sent and self.sent[0] <= now - self.window:
                self.sent.popleft()
            minute_left = self.left.get("minute_limit_left")
            if len(self.sent) < self.allowed and (minute_left is None or minute_left > self.margin):
                break
            # Full: wait for the oldest call of the window to leave it. Others' calls (when the
            # headers say less is left than ours explain) leave no trace here: wait a share of the
            # window for them, then ask again.
            wait = (self.sent[0] + self.window - now if len(self.sent) >= self.allowed
                    else self.window / max(1, self.margin + 1))
            wait = max(0.0, wait) + CLOCK_SLACK_SECONDS
            log.info("tenant %s: pacing %.1f s (%d call(s) in the last minute, %s left by Xero's count)",
                     self.tenant_id, wait, len(self.sent), minute_left)
            self.sleep(wait)
            self.waited_seconds += wait
            self.left.pop("minute_limit_left", None)  # stale now: the next answer says
        self.app_budget.acquire()
        self.sent.append(self.clock())
        with self._answers:
            call, self.calls_sent = self.calls_sent, self.calls_sent + 1
            if self.day_left is not None:
                self.day_left -= 1
        return call

    def after_answer(self, call: int, headers: Mapping[str, str]) -> None:
        """Call number `call` was answered with these headers."""
        with self._answers:  # not the pacing lock: a caller waiting for the window holds that
            for header, name in LIMIT_HEADERS.items():
                if (value := headers.get(header, "")).isdigit():
                    self.left[name] = int(value)
                    if name == "day_limit_left":
                        after_it = int(value) - (self.calls_sent - call - 1)
                        self.day_left = after_it if self.day_left is None else min(self.day_left, after_it)

    def wait_out_429(self, seconds: float) -> None:
        """Xero said how long to wait: after that, what its last answer said is left is stale."""
        self.sleep(seconds)
        self.waited_seconds += seconds
        self.left.pop("minute_limit_left", None)
        self.left.pop("app_minute_limit_left", None)

    @staticmethod
    def retry_after(headers: Mapping[str, str], default: float = 60.0) -> float:
        raw = headers.get("Retry-After", "")
        try:
            return max(0.0, float(raw))
        except ValueError:
            return default


def describe_wait(seconds: float) -> str:
    """'in 3 h 20 min' for a daily-limit message."""
    minutes = math.ceil(seconds / 60)
    return f"in {minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"in {minutes} min"
