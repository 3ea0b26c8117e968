"""API bearer tokens with roles: only their sha256 is stored; a device token is bound to one device, an
inspector token names the inspector. The tokens file is reread when it changes, so a revoked token stops working
without a restart. Broker credentials, the ACL and TLS live in fleet/credentials.py, fleet/acl.py and
fleet/tls.py (re-exported here)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.acl import acl_text
from fleet.credentials import DeviceCredentials, mosquitto_hash, provision
from fleet.protocol import DEVICE_ID_RE
from fleet.tls import make_tls, tls_init
from runtime.errors import ConfigError, Conflict, NotFound
from runtime.fsio import atomic_write_text

__all__ = ["ROLES", "DeviceCredentials", "TokenEntry", "TokenFile", "Tokens", "acl_text", "add_token", "hash_token",
           "make_tls", "mosquitto_hash", "provision", "revoke_token", "tls_init"]

Role = Literal["admin", "viewer", "inspector", "device"]
ROLES: tuple[str, ...] = ("admin", "viewer", "inspector", "device")


# -- API tokens --------------------------------------------------------------------------------------------------
class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="who holds the token (shown in logs and stored with verdicts)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the token; the token itself is not stored")
    roles: list[Role] = Field(description="admin: everything; viewer: read; inspector: mobile; device: artifacts")
    device: str | None = Field(None, description="device tokens: the one device this token is (it downloads only "
                                                 "artifacts of releases sent to that device)")


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[TokenEntry] = Field(default_factory=list)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def device_of(entry: TokenEntry) -> str | None:
    """The device a `device` token is bound to (tokens made before binding existed: their holder's name)."""
    if "device" not in entry.roles:
        return None
    return entry.device or entry.name


class Tokens:
    """Bearer tokens by hash, from `path` (reread when the file changes). `admin` implies every other role."""

    def __init__(self, entries: list[TokenEntry], path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self.by_hash = {e.sha256: e for e in entries}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    @staticmethod
    def read(path: Path | None) -> list[TokenEntry]:
        if path is None or not Path(path).exists():
            return []
        try:
            return TokenFile.model_validate_json(Path(path).read_bytes()).tokens
        except (OSError, ValidationError) as err:
            raise ConfigError(f"{path}: invalid token file: {err}") from err

    @classmethod
    def load(cls, path: Path | None) -> Tokens:
        return cls(cls.read(path), path)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self.by_hash = {e.sha256: e for e in self.read(self.path)}
            except ConfigError:  # a half-written file by hand: keep the tokens we had rather than lock everyone out
                return
            self._stamp = stamp

    def check(self, token: str) -> TokenEntry | None:
        self._refresh()
        digest = hash_token(token)
        for h, entry in list(self.by_hash.items()):
            if hmac.compare_digest(h, digest):
                return entry
        return None

    def with_role(self, role: str) -> list[TokenEntry]:
        self._refresh()
        return [e for e in self.by_hash.values() if role in e.roles]


def add_token(path: Path, name: str, roles: list[str], device: str | None = None) -> str:
    """Create a token for `name` with `roles`, store its hash in `path`, and return the token (shown once).
    A `device` token must name its device (and the device role)."""
    bad = sorted(set(roles) - set(ROLES))
    if bad or not roles:
        raise ConfigError(f"roles must be among {list(ROLES)}, got {roles}")
    if not name or len(name) > 100 or any(c in name for c in "\r\n\t"):
        raise ConfigError(f"token holder name {name!r}: 1 to 100 characters, no line breaks")
    if "device" in roles and device is None:
        device = name  # a device token's holder is its device unless said otherwise
    if device is not None and not DEVICE_ID_RE.match(device):
        raise ConfigError(f"invalid device id {device!r} for a device token (name it with --device)")
    path = Path(path)
    current = TokenFile(tokens=Tokens.read(path))
    token = secrets.token_urlsafe(32)
    current.tokens.append(TokenEntry(name=name, sha256=hash_token(token), roles=roles, device=device))
    atomic_write_text(path, current.model_dump_json(indent=2) + "\n", mode=0o600)
    return token


def revoke_token(path: Path, name: str) -> int:
    """Remove every token held by `name`; returns how many. A running fleet rereads the file on the next request."""
    path = Path(path)
    current = Tokens.read(path)
    kept = [e for e in current if e.name != name]
    if len(kept) == len(current):
        raise NotFound(f"no token held by {name!r} in {path}")
    atomic_write_text(path, TokenFile(tokens=kept).model_dump_json(indent=2) + "\n", mode=0o600)
    return len(current) - len(kept)


def ensure_unique_name(path: Path, name: str) -> None:
    """Inspector names identify verdicts: refuse a second inspector token under a name already in use."""
    if any(e.name == name for e in Tokens.read(path)):
        raise Conflict(f"a token held by {name!r} exists already in {path}; revoke it first or pick another name")
