"""Xero webhooks: signed event batches POSTed when data changes, and the intent-to-receive handshake.

``x-xero-signature`` = base64(HMAC-SHA256(webhook key, raw body)). The receiver must answer 200 (empty body)
to a good signature and 401 to a bad one. Failed deliveries are retried with back-off for up to 24 hours of
sandbox time (a delivery thread; the back-off is in wall-clock seconds scaled by the clock speed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from .clock import SandboxClock
from .config import SandboxConfig

CATEGORIES = {"Invoices": "INVOICE", "Contacts": "CONTACT", "CreditNotes": "CREDITNOTE"}


def sign(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def _entropy() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))


@dataclass
class Delivery:
    sequence: tuple[int, int]
    body: bytes
    attempts: int = 0
    statuses: list[Any] = field(default_factory=list)
    delivered: bool = False
    first_ms: int = 0


class WebhookDispatcher:
    def __init__(self, cfg: SandboxConfig, clock: SandboxClock) -> None:
        self.url = cfg.webhook_url
        self.key = cfg.webhook_key
        self.clock = clock
        self.base_url = "https://api.xero.com"
        self.batch_window = 0.05  # wall seconds to gather events into one POST
        self.retry_for_ms = 24 * 3600 * 1000
        self._seq = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.deliveries: list[Delivery] = []
        self.pending = 0

    def configure(self, url: str | None = None, key: str | None = None) -> None:
        if url is not None:
            self.url = url or None
        if key is not None:
            self.key = key or None

    # -- events ----------------------------------------------------------------------------------------

    def emit(self, tenant_id: str, resource: str, resource_id: str, event_type: str) -> None:
        category = CATEGORIES.get(resource)
        if not self.url or not self.key or category is None:
            return
        now = self.clock.now_ms()
        from .serialise import iso_seconds

        event = {
            "resourceUrl": f"{self.base_url}/api.xro/2.0/{resource}/{resource_id}",
            "resourceId": resource_id,
            "eventDateUtc": iso_seconds(now) + f".{now % 1000:03d}",
            "eventType": event_type,
            "eventCategory": category,
            "tenantId": tenant_id,
            "tenantType": "ORGANISATION",
        }
        with self._lock:
            self.pending += 1
        self._queue.put(event)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        retry: list[tuple[float, Delivery]] = []
        while not self._stop.is_set():
            timeout = 0.2
            if retry:
                timeout = max(0.0, min(timeout, min(t for t, _ in retry) - time.monotonic()))
            events = []
            try:
                ev = self._queue.get(timeout=timeout)
                if ev is None:
                    break
                events.append(ev)
                deadline = time.monotonic() + self.batch_window
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        ev = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                    if ev is None:
                        self._stop.set()
                        break
                    events.append(ev)
            except queue.Empty:
                pass
            if events:
                with self._lock:
                    first = self._seq + 1
                    self._seq += len(events)
                    last = self._seq
                    self.pending -= len(events)
                body = json.dumps(
                    {
                        "events": events,
                        "firstEventSequence": first,
                        "lastEventSequence": last,
                        "entropy": _entropy(),
                    },
                    separators=(",", ":"),
                ).encode()
                d = Delivery((first, last), body, first_ms=self.clock.now_ms())
                with self._lock:
                    self.deliveries.append(d)
                if not self._attempt(d):
                    retry.append((time.monotonic() + self._backoff(d), d))
            now = time.monotonic()
            due = [x for x in retry if x[0] <= now]
            retry = [x for x in retry if x[0] > now]
            for _, d in due:
                if self._attempt(d):
                    continue
                if self.clock.now_ms() - d.first_ms < self.retry_for_ms:
                    retry.append((time.monotonic() + self._backoff(d), d))

    def _backoff(self, d: Delivery) -> float:
        # Xero backs off over hours; scale by the clock speed so accelerated tests see retries quickly.
        sandbox_seconds = min(3600.0, 5.0 * (2 ** (d.attempts - 1)))
        return max(0.05, self.clock.to_wall_seconds(sandbox_seconds))

    def _attempt(self, d: Delivery) -> bool:
        d.attempts += 1
        if not self.url or not self.key:
            d.statuses.append("not configured")
            return False
        try:
            r = requests.post(
                self.url,
                data=d.body,
                timeout=5,
                headers={"Content-Type": "application/json", "x-xero-signature": sign(self.key, d.body)},
            )
            d.statuses.append(r.status_code)
            d.delivered = r.status_code == 200
        except requests.RequestException as exc:
            d.statuses.append(type(exc).__name__)
            d.delivered = False
        return d.delivered

    # -- intent to receive -----------------------------------------------------------------------------

    def intent_to_receive(self, url: str | None = None, key: str | None = None, rounds: int = 2) -> dict:
        """Xero's handshake: POSTs with no events, some correctly signed (expect 200, empty body) and some
        signed with a wrong key (expect 401). The URL passes only if every answer is right."""
        url = url or self.url
        key = key or self.key
        if not url or not key:
            return {"ok": False, "error": "webhook url and key are required", "attempts": []}
        attempts = []
        ok = True
        for n in range(rounds * 2):
            good = n % 2 == 0
            body = json.dumps(
                {"events": [], "firstEventSequence": 0, "lastEventSequence": 0, "entropy": _entropy()},
                separators=(",", ":"),
            ).encode()
            signature = sign(key if good else key + "-wrong", body)
            try:
                r = requests.post(
                    url,
                    data=body,
                    timeout=5,
                    headers={"Content-Type": "application/json", "x-xero-signature": signature},
                )
                status, text = r.status_code, r.text
            except requests.RequestException as exc:
                status, text = None, type(exc).__name__
            expected = 200 if good else 401
            passed = status == expected and (not good or text == "")
            ok = ok and passed
            attempts.append(
                {
                    "signed": "correct" if good else "incorrect",
                    "status": status,
                    "expected": expected,
                    "passed": passed,
                }
            )
        return {"ok": ok, "attempts": attempts}

    def summary(self) -> dict:
        with self._lock:
            return {
                "deliveries": len(self.deliveries),
                "delivered": sum(d.delivered for d in self.deliveries),
                "pending": self.pending,
                "lastSequence": self._seq,
            }

    def deliveries_json(self) -> list[dict]:
        with self._lock:
            return [
                {
                    "firstEventSequence": d.sequence[0],
                    "lastEventSequence": d.sequence[1],
                    "attempts": d.attempts,
                    "statuses": list(d.statuses),
                    "delivered": d.delivered,
                    "body": json.loads(d.body),
                }
                for d in self.deliveries
            ]
