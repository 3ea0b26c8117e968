"""The device registry: a device appears when it first connects or reports; admins give it groups and tags."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from fleet.protocol import DEVICE_ID_RE, Activation, Reported, now_iso
from fleet.store import Store
from runtime.errors import ConfigError, NotFound


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in ("groups", "tags", "activation", "reported"):
        out[k] = json.loads(row[k]) if row.get(k) else ({} if k in ("tags", "activation", "reported") else [])
    return out


def activation_of(row: dict[str, Any] | None) -> Activation | None:
    """The typed activation a device last reported, from a devices row (its `activation` column as stored, JSON
    text, or as decoded by the registry); None if it never reported one or what is stored does not parse."""
    raw = (row or {}).get("activation")
    if not raw:
        return None
    try:
        return Activation.model_validate_json(raw) if isinstance(raw, (str, bytes)) else \
            Activation.model_validate(raw)
    except ValidationError:
        return None


class Devices:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _touch(self, device: str, **cols: Any) -> None:
        # one statement, no read first: a fleet of hundreds reporting at once holds the write lock as briefly as
        # possible (a rollout's and a rollback's writes queue behind these)
        now = now_iso()
        row = {"id": device, "groups": "[]", "tags": "{}", "first_seen": now, "last_seen": now, **cols}
        updates = ", ".join(f"{c} = excluded.{c}" for c in ("last_seen", *cols))
        self.store.execute(f"INSERT INTO devices ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                           f"ON CONFLICT (id) DO UPDATE SET {updates}", list(row.values()))

    def seen(self, device: str, status: str | None = None) -> None:
        """Register `device` if new and note its connection status (`online` / `offline`)."""
        self._touch(device, **({"status": status} if status else {}))

    def report(self, rep: Reported) -> None:
        self._touch(rep.device, active=rep.active, candidate=rep.candidate,
                    activation=rep.activation.model_dump_json(), last_error=rep.last_error,
                    reported=rep.model_dump_json(by_alias=True))

    def add(self, device: str, groups: list[str] | None = None, tags: dict[str, str] | None = None) -> dict:
        """Pre-register a device (e.g. before it first connects) with its groups and tags."""
        if not DEVICE_ID_RE.match(device):
            raise ConfigError(f"invalid device id {device!r}")
        self.seen(device)
        return self.update(device, groups, tags)

    def update(self, device: str, groups: list[str] | None = None, tags: dict[str, str] | None = None) -> dict:
        if self.store.get("devices", device) is None:
            raise NotFound(f"no device {device!r}")
        cols: dict[str, Any] = {"id": device}
        if groups is not None:
            cols["groups"] = json.dumps(sorted(set(groups)))
        if tags is not None:
            cols["tags"] = json.dumps(tags, sort_keys=True)
        self.store.upsert("devices", cols, pk="id")
        return self.get(device)

    def get(self, device: str) -> dict[str, Any]:
        row = self.store.get("devices", device)
        if row is None:
            raise NotFound(f"no device {device!r}")
        return _decode(row)

    def list(self, group: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        """Devices, optionally only members of `group` and/or carrying `tag` (`key` or `key=value`)."""
        out = []
        for row in self.store.rows("SELECT * FROM devices ORDER BY id"):
            d = _decode(row)
            if group is not None and group not in d["groups"]:
                continue
            if tag is not None:
                k, sep, v = tag.partition("=")
                if k not in d["tags"] or (sep and d["tags"][k] != v):
                    continue
            out.append(d)
        return out
