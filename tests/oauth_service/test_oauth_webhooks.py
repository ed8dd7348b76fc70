"""Xero webhooks: constant-time signature check, intent to receive, events stored, empty 200."""

import base64
import hashlib
import hmac
import json
import uuid

import httpx
from oauth_testlib import LOG_SINK, WEBHOOK_KEY, audit_rows
from sqlalchemy import text


def sign(body: bytes, key: str = WEBHOOK_KEY) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def post(service, body: bytes, signature: str | None, **extra_headers: str) -> httpx.Response:
    headers = {"Content-Type": "application/json", **extra_headers}
    if signature is not None:
        headers["x-xero-signature"] = signature
    return httpx.post(f"{service.url}/xero/webhooks", content=body, headers=headers)


def test_intent_to_receive(service):
    body = json.dumps(
        {"events": [], "firstEventSequence": 0, "lastEventSequence": 0, "entropy": "S0m3r4Nd0mt3xt"}
    ).encode()
    good = post(service, body, sign(body))
    assert good.status_code == 200 and good.content == b""
    bad = post(service, body, sign(body, key="wrong-key"))
    assert bad.status_code == 401 and bad.content == b""
    assert post(service, body, None).status_code == 401
    assert post(service, body, "not base64 at all!").status_code == 401


def test_events_are_stored_once_for_the_orchestrator(service, engine):
    tenant = str(uuid.uuid4())
    invoice, contact = str(uuid.uuid4()), str(uuid.uuid4())
    events = [
        {
            "resourceUrl": f"https://api.xero.com/api.xro/2.0/Invoices/{invoice}",
            "resourceId": invoice,
            "eventDateUtc": "2026-05-20T10:00:00.123",
            "eventType": "UPDATE",
            "eventCategory": "INVOICE",
            "tenantId": tenant,
            "tenantType": "ORGANISATION",
        },
        {
            "resourceUrl": f"https://api.xero.com/api.xro/2.0/Contacts/{contact}",
            "resourceId": contact,
            "eventDateUtc": "2026-05-20T10:00:01.000",
            "eventType": "CREATE",
            "eventCategory": "CONTACT",
            "tenantId": tenant,
            "tenantType": "ORGANISATION",
        },
    ]
    body = json.dumps(
        {"events": events, "firstEventSequence": 1, "lastEventSequence": 2, "entropy": "abc"}
    ).encode()
    for _ in range(2):  # Xero retries deliveries: the second is deduplicated
        r = post(service, body, sign(body))
        assert r.status_code == 200 and r.content == b""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM app.webhook_events WHERE tenant_id = :t ORDER BY event_date"), {"t": tenant}
        ).all()
    assert [(r.event_category, r.event_type, r.resource_id) for r in rows] == [
        ("INVOICE", "UPDATE", invoice),
        ("CONTACT", "CREATE", contact),
    ]
    assert all(r.processed_at is None and r.received_at and r.event_date for r in rows)
    from oauth_service.events import mark_webhook_events_processed, pending_webhook_events

    pending = pending_webhook_events(engine, tenant)
    assert [e.resource_id for e in pending] == [invoice, contact]
    assert mark_webhook_events_processed(engine, [e.id for e in pending]) == 2
    assert pending_webhook_events(engine, tenant) == []
    received = audit_rows(engine, "webhook_received", tenant_id=tenant)
    assert [a.metadata["stored"] for a in received] == [2, 0]
    assert all(a.outcome == "success" and str(a.ip_address) == "127.0.0.1" for a in received)


def test_bad_signature_stores_nothing(service, engine):
    tenant = str(uuid.uuid4())
    body = json.dumps(
        {
            "events": [
                {
                    "resourceId": "r",
                    "tenantId": tenant,
                    "eventCategory": "INVOICE",
                    "eventType": "CREATE",
                    "eventDateUtc": "2026-05-20T10:00:00",
                }
            ]
        }
    ).encode()
    assert post(service, body, sign(body + b" ")).status_code == 401
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM app.webhook_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()
    assert n == 0
    assert any(a.outcome == "denied" for a in audit_rows(engine, "webhook_received"))


def test_sandbox_intent_to_receive_handshake_passes(service, sandbox):
    r = httpx.post(
        f"{sandbox.url}/__sandbox/webhooks/intent-to-receive",
        json={"url": f"{service.url}/xero/webhooks", "key": WEBHOOK_KEY},
        timeout=30,
    )
    result = r.json()
    assert result["ok"] is True, result
    assert {a["signed"] for a in result["attempts"]} == {"correct", "incorrect"}


def _rows_since(engine, since, action: str = "webhook_received") -> list:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM app.audit_log WHERE action = :a AND timestamp >= :s ORDER BY timestamp"),
            {"a": action, "s": since},
        ).all()


def test_anonymous_rejections_are_audited_within_a_bound(service, engine):
    """A flood of bad signatures (or bogus callbacks) cannot flood the audit log; good signatures are
    still audited every time."""
    with engine.connect() as conn:
        since = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    bound = service.settings.anonymous_audit_per_minute
    body = b'{"events": []}'
    for _ in range(bound * 4):
        assert post(service, body, sign(body, key="forged")).status_code == 401
    for i in range(3):
        good = json.dumps({"events": [], "entropy": f"good-{i}"}).encode()
        assert post(service, good, sign(good)).status_code == 200
    rows = _rows_since(engine, since)
    denied = [r for r in rows if r.outcome == "denied"]
    # at most `bound` rows per minute, plus one summary for a minute that ended during the burst
    assert 1 <= len([r for r in denied if not r.metadata.get("aggregated")]) <= bound * 2
    assert len(denied) <= bound * 2 + 2
    assert len([r for r in rows if r.outcome == "success"]) == 3

    for _ in range(bound * 3):
        r = httpx.get(f"{service.url}/xero/auth/callback", params={"state": "bogus", "code": "x"})
        assert r.status_code == 302 and r.headers["location"].endswith("error=invalid_state")
    bogus = [r for r in _rows_since(engine, since, "xero_callback_failed") if r.user_id is None]
    assert 1 <= len(bogus) <= bound * 2 + 2


def _stored(engine, tenant: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM app.webhook_events WHERE tenant_id = :t ORDER BY resource_id"), {"t": tenant}
        ).all()


def test_odd_events_in_a_signed_delivery_are_skipped_not_a_500(service, engine):
    """A well-signed delivery is answered 200 whatever its events look like (else Xero retries it for
    24 hours): what fits is stored, malformed events are skipped with a log line."""
    tenant = str(uuid.uuid4())
    kept, loose = "a-" + str(uuid.uuid4()), "b-" + str(uuid.uuid4())
    events = [
        {
            "resourceId": kept,
            "tenantId": tenant,
            "tenantType": "ORGANISATION" * 4,  # longer than the column: cut
            "eventCategory": "INVOICE",
            "eventType": "UPDATE",
            "eventDateUtc": "2026-05-20T10:00:00",
        },
        # odd optional fields are left out, the event is kept
        {"resourceId": loose, "tenantId": tenant, "eventCategory": ["INVOICE"], "eventType": "X" * 40,
         "eventDateUtc": 12345, "resourceUrl": 7},
        # malformed: skipped
        {"tenantId": 42, "resourceId": "r"},
        {"tenantId": tenant, "resourceId": {"nested": 1}},
        {"tenantId": tenant + "\x00", "resourceId": "r"},
        {"tenantId": "t" * 256, "resourceId": "r"},
        "not an event",
    ]
    body = json.dumps({"events": events, "firstEventSequence": 1, "lastEventSequence": 7}).encode()
    r = post(service, body, sign(body))
    assert r.status_code == 200 and r.content == b""
    rows = _stored(engine, tenant)
    assert [(r.resource_id, r.tenant_type, r.event_category, r.event_type) for r in rows] == [
        (kept, ("ORGANISATION" * 4)[:32], "INVOICE", "UPDATE"),
        (loose, None, "UNKNOWN", "UNKNOWN"),
    ]
    assert rows[1].resource_url is None and rows[1].event_date is None
    [audit] = audit_rows(engine, "webhook_received", tenant_id=tenant)
    assert audit.metadata["stored"] == 2 and audit.metadata["skipped"] == 5
    assert any("skipped 5 malformed event(s) of 7" in line for line in LOG_SINK.lines)
    # not JSON at all, or nested deeper than the parser goes: still a 200 to a good signature
    for odd in (b"not json", b"[" * 100_000):
        assert post(service, odd, sign(odd)).status_code == 200


def test_an_oversized_delivery_is_refused_before_its_signature_is_computed(service, engine):
    limit = 1024 * 1024
    source = {"X-Forwarded-For": "198.51.100.78"}  # its own anonymous-audit budget
    body = b'{"events": [], "pad": "' + b"x" * limit + b'"}'
    assert post(service, body, sign(body), **source).status_code == 413  # correctly signed, still too big
    chunked = httpx.post(  # no Content-Length: counted while it streams in
        f"{service.url}/xero/webhooks",
        content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={"x-xero-signature": sign(body), **source},
    )
    assert chunked.status_code == 413
    refused = [a for a in audit_rows(engine, "webhook_received") if a.metadata.get("too_large")]
    assert [(a.outcome, str(a.ip_address)) for a in refused] == [("denied", "198.51.100.78")] * 2
    fits = b'{"events": [], "pad": "' + b"x" * (limit - 100) + b'"}'
    assert post(service, fits, sign(fits)).status_code == 200
