"""Request body limits for the fleet's HTTP API: a body over its limit is refused with 413 before it is read into
memory (by its Content-Length), or as soon as a body sent without one (chunked) passes the limit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from runtime.errors import TooLarge

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class BodyLimit:
    """ASGI middleware. `limit_for(path)` gives the largest body in bytes a route accepts, or None for a route
    that enforces its own limit (a bundle upload, whose refusal names the bundle sent)."""

    def __init__(self, app: Any, limit_for: Callable[[str], int | None]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(send, f"request body of {int(length)} bytes is over the limit of {limit} bytes for "
                                f"{scope['path']}")
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # raised inside the route's body read: the API turns it into 413 like any TooLarge
                    raise TooLarge(f"request body is over the limit of {limit} bytes for {scope['path']}")
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, why: str) -> None:
    body = json.dumps({"error": why, "type": "TooLarge"}).encode()
    await send({"type": "http.response.start", "status": TooLarge.http_status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
