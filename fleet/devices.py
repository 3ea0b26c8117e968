"""The device registry: a device appears when it first connects or reports; admins give it groups and tags."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from fleet.protocol import DEVICE_ID_RE, Activation, Reported, now_iso
from fleet.store import Store, StoreUnavailable
from runtime.errors import ConfigError, NotFound

log = logging.getLogger(__name__)


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


def _reported_cols(rep: Reported) -> dict[str, Any]:
    return {"active": rep.active, "candidate": rep.candidate, "activation": rep.activation.model_dump_json(),
            "last_error": rep.last_error, "reported": rep.model_dump_json(by_alias=True)}


def _touch_sql(cols: tuple[str, ...]) -> str:
    """Register a device if new, else set `cols` and last_seen: one statement, no read first (parameters: id,
    first_seen, last_seen, then `cols`)."""
    names = ("id", "groups", "tags", "first_seen", "last_seen", *cols)
    values = ", ".join(["?", "'[]'", "'{}'", "?", "?", *("?" * len(cols))])
    updates = ", ".join(f"{c} = excluded.{c}" for c in ("last_seen", *cols))
    return f"INSERT INTO devices ({', '.join(names)}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {updates}"


class States:
    """Connection status and reported state from the messages of a group, to be written together
    (`Devices.write`): per device the latest value of each column, as if each message had been applied in turn.
    Each change keeps the index of the message it came from, to name it if the store refuses it."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, str, dict[str, Any]]] = []  # (message index, device, columns), in order

    def seen(self, device: str, status: str, at: int) -> None:
        self.changes.append((at, device, {"status": status}))

    def report(self, rep: Reported, at: int) -> None:
        self.changes.append((at, rep.device, _reported_cols(rep)))

    def latest(self) -> dict[str, dict[str, Any]]:
        """Per device, the columns its changes set, each with its last value."""
        out: dict[str, dict[str, Any]] = {}
        for _, device, cols in self.changes:
            out.setdefault(device, {}).update(cols)
        return out


class Devices:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _touch(self, device: str, **cols: Any) -> None:
        # one statement, no read first: a fleet of hundreds reporting at once holds the write lock as briefly as
        # possible (a rollout's and a rollback's writes queue behind these)
        now = now_iso()
        self.store.execute(_touch_sql(tuple(cols)), [device, now, now, *cols.values()])

    def seen(self, device: str, status: str | None = None) -> None:
        """Register `device` if new and note its connection status (`online` / `offline`)."""
        self._touch(device, **({"status": status} if status else {}))

    def report(self, rep: Reported) -> None:
        self._touch(rep.device, **_reported_cols(rep))

    def write(self, states: States) -> dict[int, Exception]:
        """Write gathered states, the latest per device, in one transaction: one commit (on PostgreSQL one WAL
        flush, the rows pipelined) where a message at a time took a commit and three round trips each. If the
        database refuses that for anything but being away (StoreUnavailable is raised), the changes are applied
        one by one as they came; returns the indices of the messages whose change it refused, with why."""
        latest = states.latest()
        if not latest:
            return {}
        now = now_iso()
        by_cols: dict[tuple[str, ...], list[tuple]] = {}
        for device, cols in latest.items():
            by_cols.setdefault(tuple(cols), []).append((device, now, now, *cols.values()))
        try:
            if len(latest) == 1:  # one statement: on PostgreSQL in autocommit, one round trip
                ((names, rows),) = by_cols.items()
                self.store.execute(_touch_sql(names), rows[0])
                return {}
            # not serialised behind the rollout's writes (PostgreSQL's store-wide lock): these read nothing first
            with self.store.transaction(serialised=False):
                for names, rows in by_cols.items():
                    self.store.execute_many(_touch_sql(names), rows)
            return {}
        except StoreUnavailable:
            raise
        except Exception:
            if len(states.changes) > 1:
                log.exception("writing the state of %d devices at once failed; one message at a time", len(latest))
        failed: dict[int, Exception] = {}
        for at, device, cols in states.changes:
            try:
                self._touch(device, **cols)
            except StoreUnavailable:
                raise
            except Exception as err:
                failed[at] = err
        return failed

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
