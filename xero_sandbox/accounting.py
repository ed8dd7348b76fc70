"""HTTP surface of the Accounting API under /api.xro/2.0, with auth, tenant checks, limits and faults."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import serialise
from .core import Sandbox
from .data import DAY_MS, TenantData
from .faults import Fault
from .http_identity import problem
from .identity import ApiAuthError
from .limits import Decision
from .query import (
    PAGED,
    Query,
    ValidationError,
    build_query,
    field_value,
    parse_if_modified_since,
    parse_order,
    parse_where,
    run_query,
    sortable,
)

log = logging.getLogger("xero_sandbox")
JSON = "application/json; charset=utf-8"
XML = "text/xml; charset=utf-8"
ENDPOINTS = ("Invoices", "Contacts", "Payments", "CreditNotes", "Accounts", "Organisation")
OFFLINE_TEXT = "The Xero API is currently offline for this organisation. Please try again later."
ERROR_500 = (
    "An error occurred in Xero. Check the API Status page http://status.developer.xero.com for current "
    "service status. Contact the API support team at api@xero.com for more assistance."
)


class DroppedResponse(Response):
    """Sends the status line and headers, part of the body, then aborts the connection."""

    def __init__(self, answer: Response, keep: int) -> None:
        super().__init__(answer.body, answer.status_code, media_type=answer.media_type)
        self.keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.keep:
            await send({"type": "http.response.body", "body": self.body[: self.keep], "more_body": True})
        raise ConnectionAbortedError("sandbox fault: connection dropped")


def wants_json(request: Request, sb: Sandbox) -> bool:
    """Xero answers XML unless the client asks for JSON (a classic first-integration surprise)."""
    accept = request.headers.get("accept", "").lower()
    return "json" in accept or (sb.cfg.json_by_default and "xml" not in accept)


def validation_error(message: str, as_json: bool = True) -> Response:
    body = {
        "ErrorNumber": 10,
        "Type": "ValidationException",
        "Message": "A validation exception occurred",
        "Elements": [{"ValidationErrors": [{"Message": message}]}],
    }
    if not as_json:
        return Response(serialise.to_xml(body, "ApiException"), 400, media_type=XML)
    return Response(serialise.dumps(body), 400, media_type=JSON)


def envelope(sb: Sandbox, key: str, items: list[dict], pagination: dict | None = None) -> dict:
    out: dict[str, Any] = {
        "Id": str(uuid.uuid4()),
        "Status": "OK",
        "ProviderName": sb.cfg.provider_name,
        "DateTimeUTC": serialise.net_date(sb.clock.now_ms(), offset=False),
    }
    if pagination is not None:
        out["pagination"] = pagination
    out[key] = items
    return out


def routes(sb: Sandbox) -> list[Route]:
    ident = sb.identity

    async def api(request: Request) -> Response | InFlight:
        endpoint = request.path_params["endpoint"]
        rest = request.path_params.get("rest", "")
        parts = [p for p in rest.split("/") if p]
        stat_name = (
            endpoint if not parts else f"{endpoint}/{{id}}" + ("/" + "/".join(parts[1:]) if parts[1:] else "")
        )
        tenant_hdr = request.headers.get("xero-tenant-id", "").strip()
        try:
            at = ident.bearer(request.headers.get("authorization"))
            ident.check_tenant(at, tenant_hdr, "History" if parts[1:2] == ["History"] else endpoint)
        except ApiAuthError as e:
            resp = problem(e.status, e.detail)
            # Like every API answer, a 401/403 carries the limits left (it does not consume any).
            resp.headers.update(sb.limiter.peek(tenant_hdr or "-", _app_of(sb, request)))
            resp.headers["Xero-Correlation-Id"] = str(uuid.uuid4())
            sb.record_call(tenant_hdr or "-", stat_name, resp.status_code, len(resp.body))
            return resp
        t = sb.by_id[tenant_hdr]
        app = at.grant.client_id
        decision = sb.limiter.acquire(tenant_hdr, app)
        if not decision.allowed:
            resp = problem(429, f"Rate limit exceeded: {decision.problem}")
            resp.headers.update(decision.headers)
            sb.record_call(tenant_hdr, stat_name, 429, len(resp.body))
            return resp
        # The call is now in flight: its slot is held until the answer has been produced and sent.
        try:
            page_raw = request.query_params.get("page")
            page = int(page_raw) if page_raw and page_raw.isdigit() else None
            fault = sb.faults.pick(tenant_hdr, endpoint, page)
            delay = sb.cfg.faults.latency_ms / 1000
            if fault is not None and fault.kind == "slow":
                delay += fault.seconds
            if delay:
                sb.record_delay(tenant_hdr, stat_name, delay)
                await asyncio.sleep(delay)
            # Produced in a worker thread, so the event loop keeps accepting (and limiting) other calls.
            resp = await run_in_threadpool(
                _respond, sb, t, request, endpoint, parts, fault, decision, app, stat_name
            )
        except BaseException:
            sb.limiter.release(tenant_hdr)
            raise
        return InFlight(resp, lambda: sb.limiter.release(tenant_hdr))

    return [
        Route("/api.xro/2.0/{endpoint}", api, methods=["GET"]),
        Route("/api.xro/2.0/{endpoint}/{rest:path}", api, methods=["GET"]),
    ]


def _respond(
    sb: Sandbox,
    t: TenantData,
    request: Request,
    endpoint: str,
    parts: list[str],
    fault: Fault | None,
    decision: Decision,
    app: str,
    stat_name: str,
) -> Response:
    tenant_id = t.info.tenant_id
    try:
        resp = _damaged(_answer(sb, t, request, endpoint, parts, fault), fault)
    except Exception:  # a sandbox bug must still look like Xero's 500, and be visible in the log
        log.exception("sandbox error answering %s", request.url)
        resp = problem(500, ERROR_500)
    headers = decision.headers
    if fault is not None and fault.kind == "429":
        # An injected 429 looks like a real minute-limit 429: no quota used, the minute limit at 0.
        headers = sb.limiter.refund(tenant_id, app, decision.at_ms)
        headers["X-MinLimit-Remaining"] = "0"
    resp.headers.update(headers)
    resp.headers["Xero-Correlation-Id"] = str(uuid.uuid4())
    sb.record_call(tenant_id, stat_name, resp.status_code, len(resp.body))
    sb.wait_while_held(tenant_id)
    return resp


class InFlight:
    """Sends a response, then frees the call's concurrency slot (also when the client went away)."""

    def __init__(self, response: Response, release: Callable[[], None]) -> None:
        self.response = response
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.release()


def summary_only(params: dict[str, str]) -> bool:
    """``summaryOnly=true`` leaves the heavy fields out (see serialise)."""
    return params.get("summaryOnly", "").lower() == "true"


def unitdp(params: dict[str, str]) -> int:
    """``unitdp=4`` shows unit prices to 4 decimals; Xero's default (and any other value) is 2."""
    raw = params.get("unitdp") or params.get("unitDp") or ""
    if raw and not raw.strip().isdigit():
        raise ValidationError(f"The value '{raw}' is not valid for unitdp.")
    return 4 if raw.strip() == "4" else 2


def _app_of(sb: Sandbox, request: Request) -> str:
    """The client id behind a bearer token, even an expired or revoked one (else the configured app)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        at = sb.identity.access.get(header[7:].strip())
        if at is not None:
            return at.grant.client_id
    return sb.cfg.client_id


def _answer(
    sb: Sandbox, t: TenantData, request: Request, endpoint: str, parts: list[str], fault: Fault | None
) -> Response:
    if fault is not None and fault.kind in ("500", "501", "503", "429", "401", "403"):
        return _fault_response(fault)
    if t.offline:
        return PlainTextResponse(OFFLINE_TEXT, 503)
    if endpoint not in ENDPOINTS:
        return PlainTextResponse("The resource you're looking for cannot be found", 404)
    as_json = wants_json(request, sb)
    try:
        with sb.data_lock:
            if as_json and endpoint in PAGED and not parts:
                return Response(_list_json(sb, t, request, endpoint), 200, media_type=JSON)
            body = _body(sb, t, request, endpoint, parts)
    except ValidationError as e:
        return validation_error(e.message, as_json)
    if body is None:
        return PlainTextResponse("The resource you're looking for cannot be found", 404)
    if not as_json:
        return Response(serialise.to_xml(body), 200, media_type=XML)
    return Response(serialise.dumps(body), 200, media_type=JSON)


BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"


def _damaged(answer: Response, fault: Fault | None) -> Response:
    """Transport faults hit whatever the answer is (JSON, XML, plain text), so a picked one always fires."""
    kind = fault.kind if fault is not None else None
    if kind == "drop":
        return DroppedResponse(answer, keep=len(answer.body) // 3)
    if kind == "truncate":
        cut = answer.body[: max(1, len(answer.body) // 2)]
        return Response(cut, answer.status_code, media_type=answer.media_type)
    if kind == "malformed":  # a proxy's HTML error page, served as if it were the API's answer
        return Response(BAD_GATEWAY, 200, media_type=answer.media_type)
    if kind in ("bad_date", "bad_amount") and answer.status_code == 200 and answer.media_type == JSON:
        return Response(_spoil_first_record(answer.body, kind), 200, media_type=JSON)
    return answer


def _spoil_first_record(body: bytes, kind: str) -> bytes:
    """The page's first record with a date that is no date, or an amount that is not a number."""
    doc = json.loads(body)
    records = next((v for v in doc.values() if isinstance(v, list) and v), None)
    if records is None:
        return body
    first = records[0]
    if kind == "bad_date":
        first["Date"] = "/Date(not-a-date)/"
    else:
        first["Total" if "Total" in first else "Amount"] = "twelve"
    return json.dumps(doc).encode()


def _fault_response(f: Fault) -> Response:
    if f.kind == "503":
        return PlainTextResponse(OFFLINE_TEXT, 503)
    if f.kind == "501":
        return PlainTextResponse("The requested method is not implemented", 501)
    if f.kind == "429":
        resp = problem(429, "Rate limit exceeded: minute")
        resp.headers.update({"Retry-After": "1", "X-Rate-Limit-Problem": "minute"})
        return resp
    if f.kind == "401":
        return problem(401, "TokenExpired: token expired (sandbox fault)")
    if f.kind == "403":
        return problem(403, "AuthenticationUnsuccessful")
    return problem(500, ERROR_500)


def _body(sb: Sandbox, t: TenantData, request: Request, endpoint: str, parts: list[str]) -> dict | None:
    params = dict(request.query_params)
    unit_dp = unitdp(params)
    if endpoint == "Organisation":
        return envelope(sb, "Organisations", [serialise.organisation(t, sb.cfg.tier)])
    if endpoint == "Accounts":
        ims = parse_if_modified_since(request.headers.get("if-modified-since"))
        accounts = [a for a in t.accounts() if ims is None or a["updated_ms"] > ims]
        if parts:
            idx = t.decode_id("Accounts", parts[0])
            accounts = [a for a in accounts if a["idx"] == idx]
            if not accounts:
                return None
        # The same where parser as the paged endpoints (Type, Class, Code, Name, Status, TaxType, …).
        pred = parse_where(params.get("where"), "Accounts", t)
        if pred is not None:
            accounts = [a for a in accounts if pred(a)]
        if params.get("order"):
            for field_name, desc in reversed(parse_order(params["order"], "Accounts", t)):
                key = lambda a, f=field_name: sortable(field_value(t, "Accounts", a, f))  # noqa: E731
                accounts.sort(key=key, reverse=desc)
        return envelope(sb, "Accounts", [serialise.account(t, a) for a in accounts])
    if parts:
        return _by_id(sb, t, endpoint, parts, unit_dp)
    items, pagination = _list_page(sb, t, _list_query(sb, t, request, endpoint), params)
    return envelope(sb, endpoint, items, pagination)


def _list_query(sb: Sandbox, t: TenantData, request: Request, endpoint: str) -> Query:
    params = dict(request.query_params)
    return build_query(
        t, endpoint, params, request.headers.get("if-modified-since"), sb.cfg.ims_granularity_seconds
    )


def _list_json(sb: Sandbox, t: TenantData, request: Request, endpoint: str) -> bytes:
    """A list page as JSON: its records' JSON comes from the page cache when this very page was served
    before at this data version; the envelope (a fresh Id and time) is made for every answer."""
    params = dict(request.query_params)
    q = _list_query(sb, t, request, endpoint)
    key = (t.info.tenant_id, t.version, sb.clock.now_ms() // DAY_MS, q.signature(),
           tuple(q.ids) if q.ids is not None else None, q.page, q.page_size, summary_only(params),
           unitdp(params))
    cached = sb.pages.get(key)
    if cached is None:
        items, pagination = _list_page(sb, t, q, params)
        cached = (serialise.dumps(items), pagination)
        sb.pages.put(key, *cached)
    records, pagination = cached
    head = serialise.dumps(envelope(sb, endpoint, [], pagination))
    assert head.endswith(b"[]}")  # the records' list is the envelope's last member
    return head[:-3] + records + b"}"


def _list_page(sb: Sandbox, t: TenantData, q: Query, params: dict[str, str]) -> tuple[list[dict], dict]:
    """One page of a list endpoint: its records as the API shows them, and the pagination."""
    endpoint = q.kind
    summary = summary_only(params)
    unit_dp = unitdp(params)
    states, count = run_query(t, q, sb.cache, sb.cfg.max_scan_rows)
    page = q.page or 1
    pagination = {
        "page": page,
        "pageSize": q.page_size,
        "pageCount": -(-count // q.page_size),
        "itemCount": count,
    }
    if endpoint == "Invoices":
        # Xero returns line items only when paging (or by id); summaryOnly drops the heavy fields.
        items = [
            serialise.invoice(t, st, lines=q.page is not None, summary_only=summary, unit_dp=unit_dp)
            for st in states
        ]
    elif endpoint == "CreditNotes":
        items = [serialise.credit_note(t, st, summary_only=summary, unit_dp=unit_dp) for st in states]
    else:
        items = [sb.serialise(t, endpoint, st, summary_only=summary) for st in states]
    assert endpoint in PAGED
    return items, pagination


def _by_id(sb: Sandbox, t: TenantData, endpoint: str, parts: list[str], unit_dp: int = 2) -> dict | None:
    key = parts[0]
    idx = t.decode_id(endpoint, key)
    if idx is None and endpoint == "Invoices":
        idx = _invoice_by_number(t, key)
    if idx is None:
        try:
            uuid.UUID(key)
        except ValueError:
            if endpoint != "Invoices":
                raise ValidationError(f"'{key}' is not a valid GUID") from None
        return None
    st = t.get(endpoint, idx)
    if st is None:
        return None
    if parts[1:] == ["History"]:
        return envelope(sb, "HistoryRecords", _history(t, endpoint, st))
    if parts[1:]:
        return None
    if endpoint == "Invoices":
        return envelope(sb, endpoint, [serialise.invoice(t, st, full_contact=True, unit_dp=unit_dp)])
    if endpoint == "CreditNotes":
        return envelope(sb, endpoint, [serialise.credit_note(t, st, unit_dp=unit_dp, full_contact=True)])
    return envelope(sb, endpoint, [sb.serialise(t, endpoint, st, full=True)])


def _invoice_by_number(t: TenantData, number: str) -> int | None:
    if number.startswith("INV-") and number[4:].isdigit():
        idx = int(number[4:]) - 1
        st = t.invoice(idx)
        if st is not None and st["number"] == number:
            return idx
    return None


def _history(t: TenantData, endpoint: str, st: dict) -> list[dict]:
    """Generated history (created, approved, paid) plus what run-time mutations recorded."""
    out = []
    created = st.get("created_ms", st["updated_ms"])
    out.append(
        {
            "Changes": "Created",
            "DateUTCString": serialise.iso_seconds(created),
            "DateUTC": serialise.net_date(created),
            "User": "System Generated",
            "Details": f"{endpoint[:-1]} created",
        }
    )
    if st.get("status") in ("AUTHORISED", "PAID") and st["idx"] < t.n_invoices:
        out.append(
            {
                "Changes": "Approved",
                "DateUTCString": serialise.iso_seconds(created),
                "DateUTC": serialise.net_date(created),
                "User": "System Generated",
                "Details": f"{endpoint[:-1]} approved",
            }
        )
    out.extend(t.history.get((endpoint, st["idx"]), []))
    return out
