"""Webhook events stored by `POST /xero/webhooks`, for the orchestrator to act on.

events = pending_webhook_events(engine)                 # oldest first
... sync the tenants they name ...
mark_webhook_events_processed(engine, [e.id for e in events])
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Engine, text


class WebhookEvent(NamedTuple):
    id: int
    tenant_id: str
    event_category: str
    event_type: str
    resource_id: str
    event_date: datetime | None
    received_at: datetime


def pending_webhook_events(
    engine: Engine, tenant_id: str | None = None, limit: int = 1000
) -> list[WebhookEvent]:
    """Events not yet processed (optionally for one tenant), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, tenant_id, event_category, event_type, resource_id, event_date, received_at "
                "FROM app.webhook_events WHERE processed_at IS NULL "
                "AND (CAST(:t AS varchar) IS NULL OR tenant_id = CAST(:t AS varchar)) "
                "ORDER BY received_at, id LIMIT :n"
            ),
            {"t": tenant_id, "n": limit},
        ).all()
    return [WebhookEvent(*r) for r in rows]


def mark_webhook_events_processed(engine: Engine, ids: Iterable[int]) -> int:
    """Mark events processed; returns how many changed."""
    id_list = [int(i) for i in ids]
    if not id_list:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "UPDATE app.webhook_events SET processed_at = now() "
                "WHERE id = ANY(:ids) AND processed_at IS NULL"
            ),
            {"ids": id_list},
        )
    return result.rowcount
