"""Broker credentials in one directory that both brokers read: `passwd` (Mosquitto's password-file format),
`acl` (Mosquitto's acl_file format, see fleet/acl.py) and `credentials.json` (the passwords themselves, 0600, for
the admin to hand to devices). Adding, rotating or revoking one user merges into what is there: other users keep
their passwords, hashes and ACL entries."""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.acl import acl_text, fleet_users_of
from fleet.protocol import DEVICE_ID_RE, Topics
from runtime.errors import ConfigError, Conflict, NotFound
from runtime.fsio import atomic_write_text

FLEET_USER = "shadowline-fleet"
BROKER_GROUP = "mosquitto"  # Debian's Mosquitto drops root for this user and group
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes

Role = Literal["device", "fleet"]


# -- hashes ------------------------------------------------------------------------------------------------------
def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2 password hash, `$7$iterations$salt$hash` (PBKDF2-SHA512, base64), as mosquitto_passwd
    writes it; computed here so no mosquitto tools are needed where the file is generated."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_hash(password: str, hashed: str) -> bool:
    """Check a password against a Mosquitto hash: `$7$` (PBKDF2-SHA512, Mosquitto 2) or `$6$` (salted SHA-512,
    Mosquitto 1.x files). Anything else never verifies."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
            if not 1 <= iterations <= 1_000_000:
                return False
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(digest))
            return hmac.compare_digest(got, digest)
        if len(parts) == 4 and parts[1] == "6":
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            return hmac.compare_digest(hashlib.sha512(password.encode() + salt).digest(), digest)
    except (ValueError, TypeError):
        return False
    return False


def new_password() -> str:
    return secrets.token_urlsafe(24)


def read_password_file(path: Path) -> dict[str, str]:
    """user -> hash from a Mosquitto password file; a malformed line is a ConfigError naming file:line."""
    users: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read password file {path}: {err}") from err
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith("$"):
            raise ConfigError(f"{path}:{n}: expected user:$7$... (a Mosquitto password hash)")
        users[user] = hashed
    return users


def share_with_broker(path: Path, mode: int, group: str = BROKER_GROUP) -> None:
    """Give `path` to the broker's group with `mode`, so Mosquitto can read it after dropping root. Outside root
    (tests, a laptop) only the mode is set: the file already belongs to whoever runs the broker."""
    os.chmod(path, mode)
    if os.geteuid() == 0:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return
        os.chown(path, -1, gid)


# -- the credentials directory -------------------------------------------------------------------------------------
class BrokerUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(description="broker user name; for a device, its device id")
    password: str = Field(description="the password (this file is 0600; the broker only sees the hash)")
    role: Role = Field("device", description="device: confined to its subtree; fleet: a service user")


class DeviceCredentials(BaseModel):
    """What a device needs to connect (kept for callers of `provision`)."""

    model_config = ConfigDict(extra="forbid")
    device: str
    username: str
    password: str


class CredentialStore:
    """The broker credentials of one fleet in `directory`. Call `save()` after changes (and reload Mosquitto)."""

    def __init__(self, directory: Path, topics: Topics) -> None:
        self.directory, self.topics = Path(directory), topics
        self.users: dict[str, BrokerUser] = {}
        self.hashes: dict[str, str] = {}
        self.extra_fleet_users: set[str] = set()
        self._load()

    @property
    def passwd(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def secrets_file(self) -> Path:
        return self.directory / "credentials.json"

    def _load(self) -> None:
        if self.passwd.exists():
            self.hashes = read_password_file(self.passwd)
        if self.acl.exists():
            self.extra_fleet_users = set(fleet_users_of(self.acl.read_text()))
        if self.secrets_file.exists():
            try:
                data = json.loads(self.secrets_file.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read {self.secrets_file}: {err}") from err
            for name, entry in (data.get("users", data) if isinstance(data, dict) else {}).items():
                if isinstance(entry, dict) and "device" in entry:  # the format before `role` existed
                    entry = {"username": entry.get("username", name), "password": entry.get("password", ""),
                             "role": "fleet" if name in self.extra_fleet_users else "device"}
                try:
                    self.users[name] = BrokerUser.model_validate(entry)
                except ValidationError as err:
                    raise ConfigError(f"{self.secrets_file}: user {name!r}: {err.errors()[0]['msg']}") from err

    def fleet_users(self) -> list[str]:
        return sorted(self.extra_fleet_users | {u for u, e in self.users.items() if e.role == "fleet"})

    def add(self, name: str, role: Role = "device", password: str | None = None) -> BrokerUser:
        """A new user with a fresh password; Conflict if the user exists (rotate it instead)."""
        _check_name(name, role)
        if name in self.users or name in self.hashes:
            raise Conflict(f"broker user {name!r} exists already; use `fleet credentials rotate {name}`")
        user = BrokerUser(username=name, password=password or new_password(), role=role)
        self.users[name] = user
        self.hashes[name] = mosquitto_hash(user.password)
        return user

    def rotate(self, name: str) -> BrokerUser:
        """A new password for an existing user; every other user is untouched."""
        if name not in self.users and name not in self.hashes:
            raise NotFound(f"no broker user {name!r} in {self.directory}")
        role: Role = self.users[name].role if name in self.users else (
            "fleet" if name in self.extra_fleet_users else "device")
        user = BrokerUser(username=name, password=new_password(), role=role)
        self.users[name] = user
        self.hashes[name] = mosquitto_hash(user.password)
        return user

    def revoke(self, name: str) -> None:
        if name not in self.users and name not in self.hashes:
            raise NotFound(f"no broker user {name!r} in {self.directory}")
        self.users.pop(name, None)
        self.hashes.pop(name, None)
        self.extra_fleet_users.discard(name)

    def save(self) -> None:
        """Write passwd and acl (0640, the broker's group) and credentials.json (0600), each atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{u}:{h}" for u, h in sorted(self.hashes.items())]
        atomic_write_text(self.passwd, "\n".join(lines) + "\n", mode=0o640)
        share_with_broker(self.passwd, 0o640)
        atomic_write_text(self.acl, acl_text(self.topics, self.fleet_users()), mode=0o640)
        share_with_broker(self.acl, 0o640)
        body = {"users": {n: u.model_dump() for n, u in sorted(self.users.items())}}
        atomic_write_text(self.secrets_file, json.dumps(body, indent=2) + "\n", mode=0o600)


def _check_name(name: str, role: Role) -> None:
    if role == "device" and not DEVICE_ID_RE.match(name):
        raise ConfigError(f"invalid device id {name!r}: letters, digits, '.', '_' and '-', at most 64")
    if not name or any(c in name for c in ":+#/ \t\n") or len(name) > 64:
        raise ConfigError(f"broker user name {name!r} is not allowed (no ':', '+', '#', '/', spaces; 64 at most)")


def provision(directory: Path, devices: list[str], topics: Topics, fleet_user: str = FLEET_USER,
              fleet_password: str | None = None) -> dict[str, DeviceCredentials]:
    """Credentials for `devices` and the fleet user, merged into `directory` (existing users are kept; those
    named here get a password if they have none). Returns the credentials by user name."""
    store = CredentialStore(directory, topics)
    if fleet_user not in store.users:
        if fleet_user in store.hashes:
            store.rotate(fleet_user)
        else:
            store.add(fleet_user, "fleet", fleet_password)
    for dev in devices:
        if dev == fleet_user:
            raise ConfigError(f"invalid device id {dev!r}: it is the fleet's own user")
        if dev not in store.users:
            store.rotate(dev) if dev in store.hashes else store.add(dev, "device")
    store.save()
    return {n: DeviceCredentials(device=n, username=u.username, password=u.password) for n, u in store.users.items()}


def reload_mosquitto(pid_file: Path) -> int:
    """SIGHUP the Mosquitto whose pid is in `pid_file` (its `pid_file` setting): it rereads the password file
    and ACL and disconnects clients whose credentials are gone. Returns the pid. Refuses a pid that is not a
    running mosquitto (a stale pid file must not signal some other process)."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read a pid from {pid_file}: {err}") from err
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError as err:
        raise ConfigError(f"{pid_file}: no process {pid} is running") from err
    if comm != "mosquitto":
        raise ConfigError(f"{pid_file}: process {pid} is {comm!r}, not mosquitto; not signalling it")
    os.kill(pid, signal.SIGHUP)
    return pid
