"""HTTP surface of the identity service: /identity/connect/authorize, /connect/token, /connect/revocation,
/connections."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .core import Sandbox
from .identity import ApiAuthError, OAuthError, connection_json, jwks


def problem(status: int, detail: str, title: str | None = None) -> JSONResponse:
    titles = {
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        429: "Too Many Requests",
        500: "An error occurred",
    }
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    return JSONResponse(
        {
            "Type": None,
            "Title": title or titles.get(status, "Error"),
            "Status": status,
            "Detail": detail,
            "Instance": None,
            "Extensions": {},
        },
        status,
        headers=headers,
    )


def _basic(request: Request) -> tuple[str, str] | None:
    h = request.headers.get("authorization", "")
    if not h.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(h[6:].strip()).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, pw = raw.partition(":")
    # RFC 6749 2.3.1: client id/secret are form-encoded before Basic encoding.
    return unquote_plus(user), unquote_plus(pw)


async def _form(request: Request) -> dict[str, str]:
    # Parsed by hand: OAuth bodies are always urlencoded and this avoids needing python-multipart.
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def routes(sb: Sandbox) -> list[Route]:
    ident = sb.identity

    async def authorize(request: Request) -> Response:
        status, location, body = ident.authorize(dict(request.query_params))
        if location is not None:
            return RedirectResponse(location, status_code=302)
        return JSONResponse(body, status)

    async def token(request: Request) -> Response:
        form = await _form(request)
        try:
            body = ident.token(form, _basic(request))
        except OAuthError as e:
            return JSONResponse(e.body(), e.status, headers={"Cache-Control": "no-store"})
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def revocation(request: Request) -> Response:
        form = await _form(request)
        try:
            ident.revoke(form, _basic(request))
        except OAuthError as e:
            return JSONResponse(e.body(), e.status)
        return Response(status_code=200)

    async def discovery(request: Request) -> Response:
        return JSONResponse(ident.discovery(str(request.base_url).rstrip("/")))

    async def keys(request: Request) -> Response:
        return JSONResponse(jwks())

    async def userinfo(request: Request) -> Response:
        try:
            at = ident.bearer(request.headers.get("authorization"))
        except ApiAuthError as e:
            return problem(e.status, e.detail)
        return JSONResponse(ident.userinfo(at))

    async def connections(request: Request) -> Response:
        try:
            at = ident.bearer(request.headers.get("authorization"))
        except ApiAuthError as e:
            return problem(e.status, e.detail)
        conns = ident.list_connections(at, request.query_params.get("authEventId"))
        return JSONResponse([connection_json(c) for c in conns])

    async def delete_connection(request: Request) -> Response:
        try:
            at = ident.bearer(request.headers.get("authorization"))
        except ApiAuthError as e:
            return problem(e.status, e.detail)
        if not ident.delete_connection(at, request.path_params["connection_id"]):
            return problem(404, "Connection not found")
        return Response(status_code=204)

    return [
        Route("/identity/connect/authorize", authorize, methods=["GET"]),
        Route("/connect/token", token, methods=["POST"]),
        Route("/connect/revocation", revocation, methods=["POST"]),
        Route("/connections", connections, methods=["GET"]),
        Route("/.well-known/openid-configuration", discovery, methods=["GET"]),
        Route("/.well-known/openid-configuration/jwks", keys, methods=["GET"]),
        Route("/connect/userinfo", userinfo, methods=["GET"]),
        Route("/connections/{connection_id}", delete_connection, methods=["DELETE"]),
    ]
