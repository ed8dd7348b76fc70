"""The sandbox clock: starts at the data anchor, runs at a configurable speed and can be advanced.

Everything time-based in the sandbox (token lifetimes, rate-limit windows, mutation timestamps) reads
this clock, so tests can move a "minute" or "60 days" forward without waiting.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class SandboxClock:
    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._base_ms = int(start.timestamp() * 1000)
        self._wall0 = time.monotonic()
        self._speed = float(speed)
        self._offset_ms = 0

    def now_ms(self) -> int:
        with self._lock:
            elapsed = (time.monotonic() - self._wall0) * self._speed
            return self._base_ms + self._offset_ms + int(elapsed * 1000)

    def now(self) -> float:
        """Sandbox time as epoch seconds."""
        return self.now_ms() / 1000.0

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms() / 1000.0, tz=UTC)

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        with self._lock:
            # Re-base so the time already elapsed is kept at the old speed.
            now_wall = time.monotonic()
            self._offset_ms += int((now_wall - self._wall0) * self._speed * 1000)
            self._wall0 = now_wall
            self._speed = float(speed)

    def advance(self, seconds: float) -> int:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset_ms += int(seconds * 1000)
        return self.now_ms()

    def to_wall_seconds(self, sandbox_seconds: float) -> float:
        return sandbox_seconds / self._speed
