"""The sandbox's state and its Python-level API (shared by the HTTP admin API, the server object and CLI)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import serialise
from .balances import Balances, ContactBalances
from .clock import SandboxClock
from .config import FaultConfig, SandboxConfig
from .data import DAY_MS, TenantData, TenantInfo, cents_to_decimal
from .faults import FaultEngine, FaultRule
from .identity import IdentityStore
from .limits import RateLimiter
from .query import PageCache, QueryCache

RESOURCES = ("Invoices", "Contacts", "Payments", "CreditNotes", "Accounts")


class UnknownTenant(KeyError):
    pass


class Sandbox:
    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        start = cfg.anchor if cfg.clock_start is None else max(cfg.anchor, cfg.clock_start)
        self.clock = SandboxClock(start, cfg.clock_speed)
        self.tenants: list[TenantData] = [TenantData(cfg, i) for i in range(cfg.tenants)]
        self.by_id: dict[str, TenantData] = {t.info.tenant_id: t for t in self.tenants}
        self.identity = IdentityStore(
            cfg, self.clock, {t.info.tenant_id: t.info.tenant_name for t in self.tenants}
        )
        self.limiter = RateLimiter(cfg.effective_limits(), self.clock)
        self.faults = FaultEngine(cfg.faults)
        self.cache = QueryCache()
        self.pages = PageCache(cfg.page_cache_mb * 1024 * 1024)
        self.data_lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._stats: dict[tuple[str, str], dict[str, Any]] = defaultdict(
            lambda: {"calls": 0, "bytes": 0, "status": defaultdict(int), "delay_ms": 0}
        )
        self._hold: tuple[threading.Event, str | None, float] | None = None  # see hold_calls
        self._truth_cache: dict[tuple, dict] = {}
        self._balances: dict[str, ContactBalances] = {}
        from .webhooks import WebhookDispatcher  # late import: webhooks needs the serialiser only

        self.webhooks = WebhookDispatcher(cfg, self.clock)
        from .mutations import Mutator

        self.mutator = Mutator(self)

    # -- tenants ---------------------------------------------------------------------------------------

    def tenant(self, tenant_id: str) -> TenantData:
        t = self.by_id.get(tenant_id)
        if t is None:
            raise UnknownTenant(tenant_id)
        return t

    def tenant_infos(self) -> list[TenantInfo]:
        return [t.info for t in self.tenants]

    def tenants_json(self) -> list[dict]:
        return [
            {
                "tenantId": t.info.tenant_id,
                "tenantName": t.info.tenant_name,
                "tenantType": "ORGANISATION",
                "baseCurrency": t.base_currency,
                "countryCode": t.country,
                "shortCode": t.info.short_code,
                "invoices": t.n_invoices + t.created["Invoices"],
                "contacts": t.n_contacts + t.created["Contacts"],
                "offline": t.offline,
            }
            for t in self.tenants
        ]

    # -- ground truth ----------------------------------------------------------------------------------

    def iter_states(self, t: TenantData, resource: str) -> Iterator[dict]:
        """Every current record of a resource (DELETED included), in record-index order."""
        if resource == "Accounts":
            yield from t.accounts()
            return
        if resource in ("Invoices", "Contacts"):
            base = t.n_invoices if resource == "Invoices" else t.n_contacts
            idxs: Iterator[int] = iter(range(base))
        else:
            n = t.base_count(resource)
            idxs = (t.base_idx_at(resource, p) for p in range(n))
        for idx in idxs:
            st = t.get(resource, idx)
            if st is not None:
                yield st
        created = sorted(i for i in t.overlay[resource] if not t._is_base(resource, i))
        for idx in created:
            yield t.overlay[resource][idx]

    def _cache_put(self, key: tuple, value: Any) -> None:
        # Entries of older data versions are never read again: keep the cache small.
        if len(self._truth_cache) >= 64:
            self._truth_cache.clear()
        self._truth_cache[key] = value

    def truth(self, tenant_id: str, resource: str = "Invoices") -> dict:
        if resource not in RESOURCES:
            raise KeyError(resource)
        t = self.tenant(tenant_id)
        with self.data_lock:
            key = (tenant_id, resource, t.version)
            got = self._truth_cache.get(key)
            if got is not None:
                return dict(got)
            count = 0
            total = 0
            due = 0
            by_status: dict[str, int] = defaultdict(int)
            max_upd = 0
            total_key = {"Invoices": "total", "CreditNotes": "total", "Payments": "amount"}.get(resource)
            for st in self.iter_states(t, resource):
                status = st.get("status", "ACTIVE")
                by_status[status] += 1
                max_upd = max(max_upd, st.get("updated_ms", 0))
                if status == "DELETED":
                    continue
                count += 1
                if total_key:
                    total += st[total_key]
                if resource == "Invoices":
                    due += t.amount_due(st)
            out = {
                "resource": resource,
                "tenantId": tenant_id,
                "count": count,
                "total": str(cents_to_decimal(total)) if total_key else None,
                "byStatus": dict(sorted(by_status.items())),
                "maxUpdatedDateUTC": serialise.net_date(max_upd) if max_upd else None,
                "asOf": serialise.net_date(self.clock.now_ms()),
            }
            if resource == "Invoices":
                out["amountDue"] = str(cents_to_decimal(due))
            self._cache_put(key, out)
            return dict(out)

    def records(
        self, tenant_id: str, resource: str = "Invoices", include_deleted: bool = False
    ) -> Iterator[dict]:
        """Current records as the API serialises them (by id, full detail) — for exact comparisons."""
        t = self.tenant(tenant_id)
        for st in self.iter_states(t, resource):
            if not include_deleted and st.get("status") == "DELETED":
                continue
            yield self.serialise(t, resource, st, full=True)

    def serialise(
        self, t: TenantData, resource: str, st: dict, *, full: bool = False, summary_only: bool = False
    ) -> dict:
        """A record as the list endpoints show it or, with ``full``, as GET {resource}/{id} returns it."""
        if resource == "Invoices":
            return serialise.invoice(t, st, summary_only=summary_only, full_contact=full)
        if resource == "Contacts":
            if summary_only:  # Balances are among the heavy fields summaryOnly leaves out: not computed
                return serialise.contact_full(t, st, summary_only=True)
            balances = self.contact_balances(t).get(st["idx"], (0, 0, 0, 0))
            return serialise.contact_full(t, st, balances, detail=full)
        if resource == "Payments":
            return serialise.payment(t, st, detail=full)
        if resource == "CreditNotes":
            return serialise.credit_note(t, st, summary_only=summary_only, full_contact=full)
        if resource == "Accounts":
            return serialise.account(t, st)
        raise KeyError(resource)

    def contact_balances(self, t: TenantData) -> dict[int, Balances]:
        """Per contact: (AR outstanding, AR overdue, AP outstanding, AP overdue) in cents, cached per data
        version and day (see balances.py: exact at any size, without holding the invoices)."""
        today = self.clock.now_ms() // DAY_MS
        key = (t.info.tenant_id, "balances", t.version, today)
        got = self._truth_cache.get(key)
        if got is None:
            with self.data_lock:
                base = self._balances.get(t.info.tenant_id)
                if base is None:
                    base = self._balances[t.info.tenant_id] = ContactBalances(t, today)
                got = base.on(today)
            self._cache_put(key, got)
        return got

    # -- clock -----------------------------------------------------------------------------------------

    def clock_json(self) -> dict:
        ms = self.clock.now_ms()
        return {"now": serialise.iso_seconds(ms) + "Z", "nowMs": ms, "speed": self.clock.speed}

    # -- stats -----------------------------------------------------------------------------------------

    def record_call(self, tenant_id: str, endpoint: str, status: int, nbytes: int) -> None:
        with self._stats_lock:
            s = self._stats[(tenant_id, endpoint)]
            s["calls"] += 1
            s["bytes"] += nbytes
            s["status"][str(status)] += 1

    def record_delay(self, tenant_id: str, endpoint: str, seconds: float) -> None:
        """Latency the sandbox injected (``latency_ms``, ``slow`` faults), so tests can see what it added."""
        with self._stats_lock:
            self._stats[(tenant_id, endpoint)]["delay_ms"] += round(seconds * 1000)

    @contextmanager
    def hold_calls(self, tenant_id: str | None = None, timeout: float = 30.0) -> Iterator[None]:
        """While the block runs, admitted accounting calls (to one tenant, or any) wait once their answer is
        ready, before it is sent, so they stay in flight as long as a test needs without injected latency;
        never longer than ``timeout`` seconds each."""
        gate = threading.Event()
        self._hold = (gate, tenant_id, timeout)
        try:
            yield
        finally:
            self._hold = None
            gate.set()

    def wait_while_held(self, tenant_id: str) -> None:
        hold = self._hold
        if hold is not None and hold[1] in (None, tenant_id):
            hold[0].wait(hold[2])

    def stats(self) -> dict:
        with self._stats_lock:
            rows = [
                {
                    "tenantId": k[0],
                    "endpoint": k[1],
                    "calls": v["calls"],
                    "bytes": v["bytes"],
                    "status": dict(v["status"]),
                    "injectedDelayMs": v["delay_ms"],
                }
                for k, v in sorted(self._stats.items())
            ]
        tenants = {}
        for t in self.tenants:
            tid = t.info.tenant_id
            mine = [r for r in rows if r["tenantId"] == tid]
            tenants[tid] = {
                "calls": sum(r["calls"] for r in mine),
                "calls_total": sum(r["calls"] for r in mine),
                "bytes": sum(r["bytes"] for r in mine),
                "limitsRemaining": self.limiter.remaining(tid, self.cfg.client_id),
            }
        return {
            "endpoints": rows,
            "tenants": tenants,
            "totalCalls": sum(r["calls"] for r in rows),
            "totalBytes": sum(r["bytes"] for r in rows),
            "faultsFired": dict(self.faults.fired),
            "webhooks": self.webhooks.summary(),
            "clock": self.clock_json(),
        }

    def reset_stats(self, limits: bool = True) -> None:
        with self._stats_lock:
            self._stats.clear()
        if limits:
            self.limiter.reset()

    # -- faults ----------------------------------------------------------------------------------------

    def add_fault(self, **kw: Any) -> FaultRule:
        return self.faults.add(FaultRule(**kw))

    def set_fault_rates(self, **kw: Any) -> None:
        self.faults.set_config(FaultConfig(**kw))

    def set_offline(self, tenant_id: str, offline: bool = True) -> None:
        self.tenant(tenant_id).offline = offline
