"""The fleet API's door, as pure ASGI middleware in front of FastAPI: a route's token is checked before a byte of
its body is read (FastAPI reads and parses a JSON body before it runs any dependency, so a 300 MB body without a
token used to be read in full to answer 401), and every body is capped per route while it streams in (413 from
Content-Length at once, or as soon as a chunked body passes the cap). Route handlers still declare their roles
with `require(...)`; the middleware reads them from the route."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from fleet.security import TokenEntry
from runtime.errors import AccessDenied, TooLarge, Unauthorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_LIMIT_KEY = "x-body-limit"  # in a route's openapi_extra: its cap in bytes, or "upload" (see below)
# "upload": the route streams its body to disk and enforces config.max_upload_mb itself (its refusal names the
# bundle sent); every route without a cap of its own takes config.max_body_kb.
bearer = HTTPBearer(auto_error=False, description="fleet API token (shadowline fleet token create)")


def require(*roles: str) -> Callable[..., TokenEntry]:
    """Dependency: 401 without a valid token, 403 when the token has none of `roles` (admin has every role). The
    middleware has checked it already when the request got this far; this hands the entry to the handler."""

    def check(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenEntry:
        entry = request.scope.get("state", {}).get("token_entry")
        if entry is not None:
            return entry
        return authorise(request.app.state.fleet.tokens, request.headers.get("authorization"), roles)

    check.roles = roles  # type: ignore[attr-defined]
    return check


def authorise(tokens: Any, header: str | None, roles: tuple[str, ...]) -> TokenEntry:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    entry = tokens.check(token.strip())
    if entry is None:
        raise Unauthorized("unknown or revoked token")
    if "admin" not in entry.roles and not set(roles) & set(entry.roles):
        raise AccessDenied(f"token {entry.name!r} lacks the role {' or '.join(roles)}")
    return entry


def _roles_of(route: APIRoute) -> tuple[str, ...] | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        roles = getattr(dep.call, "roles", None)
        if roles is not None:
            return tuple(roles)
        stack.extend(dep.dependencies)
    return None


def error_body(status: int, err: Exception) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"error": str(err), "type": type(err).__name__}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return body, headers


@dataclass(frozen=True)
class _Policy:
    regex: re.Pattern[str]
    methods: frozenset[str]
    roles: tuple[str, ...] | None
    cap: int | str | None


def _api_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, APIRoute]]:
    """(full path, route) of every APIRoute, also inside included routers (FastAPI >= 0.16x keeps an included
    router as one node instead of copying its routes)."""
    out: list[tuple[str, APIRoute]] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append((prefix + r.path, r))
        elif hasattr(r, "original_router"):
            ctx = getattr(r, "include_context", None)
            out += _api_routes(r.original_router.routes, prefix + (getattr(ctx, "prefix", "") or ""))
    return out


class GuardMiddleware:
    """See the module docstring. `fleet` gives the tokens and the upload cap (config.max_upload_mb)."""

    def __init__(self, app: ASGIApp, fleet: Any) -> None:
        self.app, self.fleet = app, fleet
        self._table: list[_Policy] | None = None

    def _build(self, scope: Scope) -> list[_Policy]:
        table = []
        for path, route in _api_routes(scope["app"].router.routes if "app" in scope else []):
            regex, _, _ = compile_path(path)
            cap = (route.openapi_extra or {}).get(BODY_LIMIT_KEY)
            table.append(_Policy(regex, frozenset(route.methods or ()), _roles_of(route), cap))
        return table

    def _policy(self, scope: Scope) -> tuple[tuple[str, ...] | None, int | None]:
        """(roles or None, body cap in bytes or None where the route enforces its own) of the request's route."""
        if self._table is None:
            self._table = self._build(scope)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        default = int(self.fleet.config.max_body_kb * 1024)
        for p in self._table:
            if method in p.methods and p.regex.match(path):
                if p.cap == "upload":
                    return p.roles, None
                return p.roles, min(int(p.cap), default) if p.cap is not None else default
        return None, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        roles, cap = self._policy(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            if roles is not None:
                entry = authorise(self.fleet.tokens, headers.get("authorization"), roles)
                scope.setdefault("state", {})["token_entry"] = entry
            length = headers.get("content-length")
            if cap is not None and length is not None and length.strip().isdigit() and int(length) > cap:
                raise TooLarge(f"request body of {int(length)} bytes is over the limit of {cap} bytes for "
                               f"{scope.get('path')}")
        except (Unauthorized, AccessDenied, TooLarge) as err:
            await self._refuse(send, err)
            return
        await self.app(scope, receive if cap is None else _capped(receive, cap, scope.get("path", "")), send)

    @staticmethod
    async def _refuse(send: Send, err: Exception) -> None:
        status = getattr(err, "http_status", 400)
        body, headers = error_body(status, err)
        # the body is left unread: the server closes the connection rather than read it to keep it alive
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BodyOverCap(HTTPException):
    """Raised while a body streams in past its cap. An HTTPException, so FastAPI's body reading passes it on
    (it turns other errors into 400); create_app answers it like TooLarge."""

    def __init__(self, cap: int, path: str) -> None:
        super().__init__(413, f"request body is over the limit of {cap} bytes for {path}")
        self.error = TooLarge(self.detail)


def _capped(receive: Receive, cap: int, path: str) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise BodyOverCap(cap, path)
        return message

    return wrapped
