"""Inspector login for the device's review page and review API. Inspectors hold tokens the fleet issued
(`shadowline fleet token create --role inspector`); the device keeps only their sha256 hashes in
`api.inspectors_file`, fetched from the fleet (`api.inspectors_sync_url`, with the device's own token) every
`inspectors_sync_s` and written atomically, so the page works offline with the hashes it has and a token revoked at
the fleet stops working here at the next sync. A browser logs in once (HttpOnly, SameSite=Strict session cookie);
scripts and the iOS app send `Authorization: Bearer <token>`. Who gave a verdict is the token's holder, never a
field of the request."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import AccessDenied, ConfigError, Unauthorized
from runtime.fsio import atomic_write_text

log = logging.getLogger(__name__)

COOKIE = "shadowline_review"
SESSION_S = 12 * 3600  # one shift


class InspectorHash(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=100)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    roles: list[str] = Field(default_factory=lambda: ["inspector"])


class InspectorsFile(BaseModel):
    """The device's file: what the fleet's sync answers, or a fleet tokens file (`{"tokens": [...]}`) written by
    `shadowline fleet token create --role inspector` for a device without a fleet."""

    model_config = ConfigDict(extra="ignore")
    inspectors: list[InspectorHash] = Field(default_factory=list)
    tokens: list[InspectorHash] = Field(default_factory=list)
    synced_at: str | None = None

    def entries(self) -> dict[str, str]:
        """sha256 -> inspector name, for inspector (or admin) tokens only."""
        out = {e.sha256: e.name for e in self.inspectors}
        out.update({e.sha256: e.name for e in self.tokens if {"inspector", "admin"} & set(e.roles)})
        return out


@dataclass
class _Session:
    name: str
    sha256: str
    expires: float


class Inspectors:
    """The accepted inspector tokens (reread when the file changes) and the browser sessions made from them."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, str] = {}
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> dict[str, str]:
        if self.path is None:
            return {}
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            self._by_hash, self._stamp = {}, None
            return {}
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._by_hash = InspectorsFile.model_validate_json(self.path.read_bytes()).entries()
                except (OSError, ValidationError, ValueError) as err:
                    log.error("review: cannot read inspectors file %s (%s); no inspector can log in", self.path, err)
                    self._by_hash = {}
                self._stamp = stamp
        return self._by_hash

    def check(self, token: str) -> tuple[str, str]:
        """(inspector name, token hash) of a token; Unauthorized otherwise (saying why, never which tokens exist)."""
        known = self._refresh()
        if not known:
            raise Unauthorized("no inspector tokens on this device yet: set api.inspectors_file (synced from the "
                               "fleet with api.inspectors_sync_url) and log in with an inspector token")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for h, name in known.items():
            if hmac.compare_digest(h, digest):
                return name, h
        raise Unauthorized("unknown or revoked inspector token")

    def login(self, token: str) -> tuple[str, str]:
        """A new session for a valid token: (session id, inspector name)."""
        name, digest = self.check(token)
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}  # drop the stale ones
            self._sessions[sid] = _Session(name, digest, now + SESSION_S)
        return sid, name

    def logout(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def who(self, authorization: str | None, session_id: str | None) -> str:
        """The inspector behind a request: a Bearer token, or a session whose token is still accepted."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return self.check(token)[0]
        s = self._sessions.get(session_id or "")
        if s is None or s.expires < time.time():
            raise Unauthorized("log in with your inspector token")
        if s.sha256 not in self._refresh():  # revoked since the login
            self.logout(session_id or "")
            raise Unauthorized("your inspector token was revoked; ask the fleet admin for a new one")
        return s.name


class InspectorSync:
    """Fetches the inspector hashes from the fleet every `interval_s` (GET /api/devices/{id}/inspectors with the
    device's token) into `path`. A failed fetch keeps the file as it is: the device works offline."""

    def __init__(self, url: str, device_id: str, token: str | None, path: Path, interval_s: float) -> None:
        if not token:
            raise ConfigError("api.inspectors_sync_url needs the device token (fleet.http_token)")
        self.url = f"{url.rstrip('/')}/api/devices/{device_id}/inspectors"
        self.token, self.path, self.interval_s = token, Path(path), interval_s
        self.stop_event = threading.Event()
        self.synced = threading.Event()
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="inspector-sync", daemon=True)

    def start(self) -> InspectorSync:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def sync_once(self) -> int:
        """Fetch and write the hashes; returns how many inspectors the fleet lists."""
        import httpx

        try:
            r = httpx.get(self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        except httpx.HTTPError as err:
            raise ConfigError(f"inspector sync: cannot reach {self.url}: {err}") from err
        if r.status_code != 200:
            raise ConfigError(f"inspector sync: {self.url} answered HTTP {r.status_code}: {r.text[:200]}")
        try:
            body = InspectorsFile.model_validate_json(r.content)
        except ValidationError as err:
            raise ConfigError(f"inspector sync: {self.url} sent no inspector list: {err}") from err
        body.synced_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(self.path, json.dumps(body.model_dump(exclude={"tokens"}), indent=2) + "\n", mode=0o600)
        return len(body.inspectors)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                n = self.sync_once()
                self.last_error = None
                self.synced.set()
                log.debug("inspector sync: %d inspectors", n)
            except ConfigError as err:  # offline or refused: keep what we have, say why
                self.last_error = str(err)
                log.warning("%s; keeping the inspector tokens already on the device", err)
            self.stop_event.wait(self.interval_s)


def forbid_cross_site(origin: str | None, host: str | None) -> None:
    """A browser sends Origin on a cross-site POST: refuse it (the session cookie is SameSite=Strict as well)."""
    if origin and host and origin.split("://", 1)[-1].rstrip("/") != host:
        raise AccessDenied(f"cross-site request from {origin} refused")
