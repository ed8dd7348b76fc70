"""Faults on demand: random (seeded) and scripted ("page 3 of Invoices fails once").

Kinds: ``500``, ``501``, ``503`` (organisation offline, plain text, as Xero sends it), ``429`` (a limit hit
without the quota being spent), ``slow`` (added wall-clock latency, recorded in the stats), ``drop``
(connection closed part-way through the body), ``truncate`` (body cut short), ``malformed`` (an HTML error
page instead of the answer), ``401`` (token rejected), ``403`` (connection revoked). The three body faults hit
whatever the answer is (JSON, XML, an error), so a fault counted as fired is one a client saw. Two record
faults spoil the first record of a JSON page, as a buggy upstream would: ``bad_date`` (its ``Date`` is no
date) and ``bad_amount`` (its ``Total``, or ``Amount``, is not a number).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field

from .config import FaultConfig

KINDS = ("500", "501", "503", "429", "slow", "drop", "truncate", "malformed", "401", "403",
         "bad_date", "bad_amount")


@dataclass
class FaultRule:
    kind: str
    endpoint: str | None = None  # "Invoices", "Contacts", ... None = any accounting endpoint
    tenant_id: str | None = None
    page: int | None = None
    times: int | None = 1  # None = every matching call
    skip: int = 0  # let this many matching calls through first
    seconds: float | None = None  # for "slow"
    id: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Fault:
    kind: str
    seconds: float = 0.0
    source: str = "random"


@dataclass
class FaultEngine:
    config: FaultConfig
    rules: list[FaultRule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 1
    fired: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def set_config(self, config: FaultConfig) -> None:
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)

    def pick(self, tenant_id: str, endpoint: str, page: int | None) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.endpoint not in (None, endpoint) or rule.tenant_id not in (None, tenant_id):
                    continue
                if rule.page is not None and rule.page != (page or 1):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.fired += 1
                return self._count(
                    Fault(rule.kind, rule.seconds or self.config.slow_seconds, f"rule {rule.id}")
                )
            c = self.config
            r = self._rng.random()
            for kind, p in (
                ("error", c.error_rate),
                ("slow", c.slow_rate),
                ("drop", c.drop_rate),
                ("truncate", c.truncate_rate),
                ("malformed", c.malformed_rate),
            ):
                if r < p:
                    if kind == "error":
                        kind = str(self._rng.choice(c.error_statuses))
                    return self._count(Fault(kind, c.slow_seconds))
                r -= p
            return None

    def _count(self, f: Fault) -> Fault:
        self.fired[f.kind] = self.fired.get(f.kind, 0) + 1
        return f

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "config": asdict(self.config),
                "rules": [r.to_json() for r in self.rules],
                "fired": dict(self.fired),
            }
