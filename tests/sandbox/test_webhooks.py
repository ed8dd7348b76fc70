"""Webhooks: signed event batches on data changes, retries, and the intent-to-receive handshake."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from xero_sandbox import SandboxConfig, SandboxServer, sign_webhook

KEY = "webhook-signing-key-for-tests"


class Receiver:
    """A webhook endpoint that checks x-xero-signature like a correct consumer would."""

    def __init__(self, key: str = KEY, fail_first: int = 0, check_signature: bool = True) -> None:
        self.key, self.fail_first, self.check = key, fail_first, check_signature
        self.bodies: list[dict] = []
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls += 1
                expected = base64.b64encode(
                    hmac.new(outer.key.encode(), raw, hashlib.sha256).digest()
                ).decode()
                good = hmac.compare_digest(expected, self.headers.get("x-xero-signature", ""))
                if outer.check and not good:
                    status = 401
                elif outer.fail_first > 0:
                    outer.fail_first -= 1
                    status = 500
                else:
                    status = 200
                    body = json.loads(raw)
                    if body["events"]:
                        outer.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [e for b in self.bodies for e in b["events"]]

    def wait_for(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < n:
            assert time.monotonic() < deadline, f"only {len(self.events())} of {n} events arrived"
            time.sleep(0.02)
        return self.events()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_signature_is_base64_hmac_sha256() -> None:
    body = b'{"events":[]}'
    assert sign_webhook("k", body) == base64.b64encode(hmac.new(b"k", body, hashlib.sha256).digest()).decode()


def test_mutations_send_signed_events(xero_sandbox_factory, receiver) -> None:
    sb: SandboxServer = xero_sandbox_factory(
        config=SandboxConfig(tenants=1, invoices_per_tenant=20, webhook_url=receiver.url, webhook_key=KEY)
    )
    tid = sb.tenants[0].tenant_id
    inv = sb.mutate(tid, "create_invoice", status="AUTHORISED")
    sb.mutate(tid, "pay_invoice", invoice_id=inv["InvoiceID"], amount="1.00")
    contact = sb.mutate(tid, "create_contact", name="Webhook Person")
    events = receiver.wait_for(3)
    assert [(e["eventCategory"], e["eventType"]) for e in events] == [
        ("INVOICE", "CREATE"),
        ("INVOICE", "UPDATE"),
        ("CONTACT", "CREATE"),
    ]
    assert events[0]["resourceId"] == inv["InvoiceID"] and events[2]["resourceId"] == contact["ContactID"]
    assert events[0]["resourceUrl"] == f"{sb.url}/api.xro/2.0/Invoices/{inv['InvoiceID']}"
    assert all(e["tenantId"] == tid and e["tenantType"] == "ORGANISATION" for e in events)
    assert all(
        set(e)
        == {
            "resourceUrl",
            "resourceId",
            "eventDateUtc",
            "eventType",
            "eventCategory",
            "tenantId",
            "tenantType",
        }
        for e in events
    )
    body = receiver.bodies[0]
    assert body["firstEventSequence"] >= 1 and body["lastEventSequence"] >= body["firstEventSequence"]
    assert body["entropy"]


def test_failed_delivery_is_retried(xero_sandbox_factory) -> None:
    rec = Receiver(fail_first=2)
    try:
        sb = xero_sandbox_factory(
            config=SandboxConfig(
                tenants=1, invoices_per_tenant=5, clock_speed=1000, webhook_url=rec.url, webhook_key=KEY
            )
        )
        sb.mutate(sb.tenants[0].tenant_id, "create_invoice")
        assert len(rec.wait_for(1)) == 1
        # The receiver keeps the body before it answers 200; the sandbox records the delivery only
        # once it has read that answer, so wait for the sandbox's own record.
        deadline = time.monotonic() + 10
        while not (deliveries := sb.webhook_deliveries())[0]["delivered"]:
            assert time.monotonic() < deadline, f"the sandbox never recorded the delivery: {deliveries}"
            time.sleep(0.02)
        [delivery] = deliveries
        assert delivery["statuses"] == [500, 500, 200]
    finally:
        rec.close()


def test_intent_to_receive_handshake(xero_sandbox_server, receiver) -> None:
    sb = xero_sandbox_server
    result = sb.intent_to_receive(receiver.url, KEY)
    assert result["ok"] is True
    assert {(a["signed"], a["status"]) for a in result["attempts"]} == {("correct", 200), ("incorrect", 401)}
    lax = Receiver(check_signature=False)  # accepts anything: must fail the handshake
    try:
        over_http = requests.post(
            f"{sb.url}/__sandbox/webhooks/intent-to-receive", json={"url": lax.url, "key": KEY}, timeout=30
        ).json()
        assert over_http["ok"] is False
        assert any(not a["passed"] for a in over_http["attempts"] if a["signed"] == "incorrect")
    finally:
        lax.close()


def test_webhooks_configurable_at_run_time(xero_sandbox_server, receiver) -> None:
    sb = xero_sandbox_server
    tid = sb.tenants[0].tenant_id
    sb.mutate(tid, "create_invoice")  # not configured yet: nothing sent
    r = requests.post(f"{sb.url}/__sandbox/webhooks", json={"url": receiver.url, "key": KEY}, timeout=10)
    assert r.json()["url"] == receiver.url
    cn_inv = sb.mutate(tid, "create_invoice", status="AUTHORISED")
    sb.mutate(tid, "create_credit_note", invoice_id=cn_inv["InvoiceID"], amount="3.00")
    events = receiver.wait_for(3)
    assert [e["eventCategory"] for e in events] == ["INVOICE", "CREDITNOTE", "INVOICE"]
