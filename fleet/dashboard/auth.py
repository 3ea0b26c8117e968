"""Browser sessions for the dashboard. A browser cannot send the API's bearer header on navigation, so the token
is exchanged once for a session cookie (HttpOnly, SameSite=Strict) and every form carries the session's CSRF
token. Sessions live in memory: a restart logs everyone out, which is acceptable for an admin page."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request

COOKIE = "shadowline_dash"
SESSION_S = 8 * 3600


class LoginRequired(Exception):
    """No valid session: the page handler redirects to the login page."""


class NotAllowed(Exception):
    """The session's token lacks the role an action needs."""


@dataclass
class Session:
    name: str
    roles: list[str]
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = field(default_factory=lambda: time.time() + SESSION_S)

    @property
    def admin(self) -> bool:
        return "admin" in self.roles


def _sessions(request: Request) -> dict[str, Session]:
    state = request.app.state
    if not hasattr(state, "dashboard_sessions"):
        state.dashboard_sessions = {}
    return state.dashboard_sessions


def login(request: Request, token: str) -> tuple[str, Session] | None:
    entry = request.app.state.fleet.tokens.check(token.strip()) if token.strip() else None
    if entry is None or not {"admin", "viewer"} & set(entry.roles):
        return None
    sid = secrets.token_urlsafe(32)
    s = Session(name=entry.name, roles=list(entry.roles))
    _sessions(request)[sid] = s
    return sid, s


def logout(request: Request) -> None:
    _sessions(request).pop(request.cookies.get(COOKIE, ""), None)


def bearer_entry(request: Request):
    """The API token entry of an `Authorization: Bearer` header (Prometheus scrapes this way), or None."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return request.app.state.fleet.tokens.check(token.strip())


def session(request: Request) -> Session:
    """The caller's session; raises LoginRequired."""
    s = _sessions(request).get(request.cookies.get(COOKIE, ""))
    if s is None or s.expires < time.time():
        raise LoginRequired()
    return s


def require_admin(request: Request, csrf: str) -> Session:
    """The session of an admin whose form carried the right CSRF token."""
    s = session(request)
    if not hmac.compare_digest(csrf or "", s.csrf):
        raise NotAllowed("the form is stale or came from another site (CSRF token mismatch); reload the page")
    if not s.admin:
        raise NotAllowed(f"{s.name} is not an admin: this action needs the admin role")
    return s
