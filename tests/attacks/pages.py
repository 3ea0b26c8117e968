"""Every page of the fleet service, logged in as an admin: the dashboard's pages (through its login form), the
API's GET routes without path parameters, `/metrics`. Used to prove that nothing in the store makes one answer 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from fleet.http_guard import _api_routes
from tests.fleet.conftest import auth


def get_paths(client: TestClient) -> list[str]:
    return sorted({path for path, route in _api_routes(client.app.router.routes)  # type: ignore[attr-defined]
                   if "GET" in (route.methods or ()) and "{" not in path})


def render_everything(client: TestClient, admin_token: str, extra: tuple[str, ...] = ()) -> dict[str, int]:
    """GET every page; returns their statuses (the caller asserts none is 5xx)."""
    client.post("/dashboard/login", data={"token": admin_token, "next": "/dashboard/"}, follow_redirects=False)
    out = {}
    for path in [*get_paths(client), *extra]:
        if path in ("/dashboard/logout", "/dashboard/login"):
            continue
        r = client.get(path, headers=auth(admin_token) if not path.startswith("/dashboard") else None)
        # a dashboard page seen through the login form proves nothing about rendering the data
        assert not (path.startswith("/dashboard") and r.url.path.endswith("/login")), f"{path}: not logged in"
        out[path] = r.status_code
    return out
