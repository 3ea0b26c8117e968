"""The fleet HTTP API served by a real uvicorn on a free localhost port, in a thread: the CLI's admin commands
talk to it over HTTP exactly as they would to `shadowline fleet serve`."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn

from fleet.api import create_app
from fleet.service import Fleet
from tests.conftest import free_port


class ApiServer:
    def __init__(self, fleet: Fleet, app: Any = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app or create_app(fleet), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the API server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
