"""The sandbox's own admin API under /__sandbox/ (not part of Xero).

GET    /__sandbox/tenants                                  tenants
GET    /__sandbox/tenants/{id}/truth?resource=Invoices     ground truth: count, total, byStatus...
GET    /__sandbox/tenants/{id}/truth?resource=..&format=jsonl   every current record, one JSON per line
POST   /__sandbox/tenants/{id}/mutations                   {"action": "pay_invoice", "invoice_id": ...}
POST   /__sandbox/tenants/{id}/offline                     {"offline": true}
POST   /__sandbox/tenants/{id}/disconnect                  the organisation removes the app (connections gone)
GET    /__sandbox/clock    POST /__sandbox/clock           {"advance": seconds} and/or {"speed": x}
GET    /__sandbox/stats    POST /__sandbox/stats/reset     {"limits": true}
GET    /__sandbox/faults   POST /__sandbox/faults          {"kind": "500", "endpoint": "Invoices", "page": 3}
DELETE /__sandbox/faults   POST /__sandbox/faults/rates    {"error_rate": 0.1, ...}
GET    /__sandbox/consent  POST /__sandbox/consent         {"user_id": .., "tenants": [..], "error": ..}
POST   /__sandbox/tokens/expire                            every access token expires now
GET    /__sandbox/identity                                 connections, token counts
POST   /__sandbox/identity/revoke                          {"user_id": ..} the user removes the app's access
GET    /__sandbox/webhooks POST /__sandbox/webhooks        {"url": .., "key": ..}
POST   /__sandbox/webhooks/intent-to-receive               {"url": .., "key": ..}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .core import RESOURCES, Sandbox, UnknownTenant
from .query import ValidationError


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a JSON object is expected")
    return data


def routes(sb: Sandbox) -> list[Route]:
    async def tenants(request: Request) -> Response:
        return JSONResponse(sb.tenants_json())

    async def truth(request: Request) -> Response:
        tid = request.path_params["tenant_id"]
        resource = request.query_params.get("resource", "Invoices")
        if resource not in RESOURCES:
            return _err(400, f"resource must be one of {', '.join(RESOURCES)}")
        try:
            sb.tenant(tid)
        except UnknownTenant:
            return _err(404, f"unknown tenant {tid}")
        if request.query_params.get("format") == "jsonl":
            deleted = request.query_params.get("includeDeleted", "").lower() == "true"

            def lines() -> Iterator[bytes]:
                from .serialise import dumps

                with sb.data_lock:
                    recs = (
                        list(sb.records(tid, resource, include_deleted=deleted))
                        if sb.tenant(tid).n_invoices <= 50_000
                        else None
                    )
                if recs is None:
                    recs = sb.records(tid, resource, include_deleted=deleted)  # type: ignore[assignment]
                for rec in recs:
                    yield dumps(rec) + b"\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        return JSONResponse(sb.truth(tid, resource))

    async def mutations(request: Request) -> Response:
        tid = request.path_params["tenant_id"]
        try:
            body = await _json(request)
            action = body.pop("action", None)
            if not action:
                return _err(400, "'action' is required")
            return JSONResponse(sb.mutator.apply(tid, action, **body))
        except UnknownTenant:
            return _err(404, f"unknown tenant {tid}")
        except ValidationError as e:
            return _err(400, e.message)
        except (TypeError, ValueError) as e:
            return _err(400, str(e))

    async def offline(request: Request) -> Response:
        tid = request.path_params["tenant_id"]
        body = await _json(request)
        try:
            sb.set_offline(tid, bool(body.get("offline", True)))
        except UnknownTenant:
            return _err(404, f"unknown tenant {tid}")
        return JSONResponse({"tenantId": tid, "offline": bool(body.get("offline", True))})

    async def disconnect(request: Request) -> Response:
        tid = request.path_params["tenant_id"]
        return JSONResponse({"tenantId": tid, "removed": sb.identity.drop_tenant_connections(tid)})

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            try:
                if "speed" in body:
                    sb.clock.set_speed(float(body["speed"]))
                if "advance" in body:
                    sb.clock.advance(float(body["advance"]))
            except ValueError as e:
                return _err(400, str(e))
        return JSONResponse(sb.clock_json())

    async def stats(request: Request) -> Response:
        return JSONResponse(sb.stats())

    async def stats_reset(request: Request) -> Response:
        body = await _json(request)
        sb.reset_stats(limits=bool(body.get("limits", True)))
        return JSONResponse(sb.stats())

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                rule = sb.add_fault(**(await _json(request)))
            except (TypeError, ValueError) as e:
                return _err(400, str(e))
            return JSONResponse(rule.to_json())
        if request.method == "DELETE":
            sb.faults.clear()
        return JSONResponse(sb.faults.snapshot())

    async def fault_rates(request: Request) -> Response:
        try:
            body = await _json(request)
            if "error_statuses" in body:
                body["error_statuses"] = tuple(int(s) for s in body["error_statuses"])
            sb.set_fault_rates(**body)
        except (TypeError, ValueError) as e:
            return _err(400, str(e))
        return JSONResponse(sb.faults.snapshot())

    async def consent(request: Request) -> Response:
        c = sb.identity.consent
        if request.method == "POST":
            body = await _json(request)
            if "user_id" in body:
                c.user_id = body["user_id"]
            if "tenants" in body:
                c.tenants = body["tenants"]
            if "error" in body:
                c.error = body["error"]
        return JSONResponse({"user_id": c.user_id, "tenants": c.tenants, "error": c.error})

    async def expire_tokens(request: Request) -> Response:
        return JSONResponse({"expired": sb.identity.expire_access_tokens()})

    async def identity(request: Request) -> Response:
        return JSONResponse(sb.identity.snapshot())

    async def revoke(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse({"revoked": sb.identity.revoke_authorisations(body.get("user_id"))})

    async def webhooks(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            sb.webhooks.configure(body.get("url"), body.get("key"))
        return JSONResponse(
            {
                "url": sb.webhooks.url,
                "summary": sb.webhooks.summary(),
                "deliveries": sb.webhooks.deliveries_json(),
            }
        )

    async def itr(request: Request) -> Response:
        import asyncio

        body = await _json(request)
        result = await asyncio.to_thread(sb.webhooks.intent_to_receive, body.get("url"), body.get("key"))
        return JSONResponse(result)

    p = "/__sandbox"
    return [
        Route(f"{p}/tenants", tenants, methods=["GET"]),
        Route(f"{p}/tenants/{{tenant_id}}/truth", truth, methods=["GET"]),
        Route(f"{p}/tenants/{{tenant_id}}/mutations", mutations, methods=["POST"]),
        Route(f"{p}/tenants/{{tenant_id}}/offline", offline, methods=["POST"]),
        Route(f"{p}/tenants/{{tenant_id}}/disconnect", disconnect, methods=["POST"]),
        Route(f"{p}/clock", clock, methods=["GET", "POST"]),
        Route(f"{p}/stats", stats, methods=["GET"]),
        Route(f"{p}/stats/reset", stats_reset, methods=["POST"]),
        Route(f"{p}/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route(f"{p}/faults/rates", fault_rates, methods=["POST"]),
        Route(f"{p}/consent", consent, methods=["GET", "POST"]),
        Route(f"{p}/tokens/expire", expire_tokens, methods=["POST"]),
        Route(f"{p}/identity", identity, methods=["GET"]),
        Route(f"{p}/identity/revoke", revoke, methods=["POST"]),
        Route(f"{p}/webhooks", webhooks, methods=["GET", "POST"]),
        Route(f"{p}/webhooks/intent-to-receive", itr, methods=["POST"]),
    ]
