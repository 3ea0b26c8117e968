"""Read methods of the store for analytics and the dashboard: fleet.protocol records filtered in the database by
device, group, release and time, and figures computed by the database where volumes grow (counts per device,
latest event per device). Portable SQL (`?` placeholders) over `rows()`, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from fleet.protocol import AlertRecord, EventRecord, MetricsRecord, PredictionRecord, ReviewRecord
from fleet.store.schema import RECORD_COLUMNS, RECORD_TABLES


class Queries:
    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def group_devices(self, group: str) -> list[str]:
        return [r["id"] for r in self.rows("SELECT id, groups FROM devices ORDER BY id")
                if group in json.loads(r["groups"] or "[]")]

    def _where(self, kind: str, device: str | None, group: str | None, release: str | None, since: str | None,
               until: str | None, extra: dict[str, Any] | None = None) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if device is not None:
            where.append("device = ?")
            params.append(device)
        if group is not None:
            members = self.group_devices(group)
            where.append(f"device IN ({', '.join('?' * len(members))})" if members else "1 = 0")
            params.extend(members)
        if release is not None:
            if "release" not in RECORD_COLUMNS[kind]:
                raise ValueError(f"{kind} records carry no release")
            name, _, rev = release.partition("@")
            where.append("release = ?")
            params.append(name)
            if rev:
                where.append("revision = ?")
                params.append(int(rev))
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        for col, val in (extra or {}).items():
            where.append(f"{col} = ?")
            params.append(val)
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def _select(self, kind: str, device: str | None, group: str | None, release: str | None, since: str | None,
                until: str | None, limit: int | None, extra: dict[str, Any] | None = None) -> Iterator[Any]:
        where, params = self._where(kind, device, group, release, since, until, extra)
        sql = f"SELECT record FROM {kind}{where} ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        model = RECORD_TABLES[kind]
        for r in self.rows(sql, params):
            yield model.model_validate_json(r["record"])

    def predictions(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                    since: str | None = None, until: str | None = None, limit: int | None = None,
                    role: str | None = None) -> Iterator[PredictionRecord]:
        """Prediction records filtered by device, group, release (`name` or `name@revision`) and time
        (ISO-8601, `since` inclusive, `until` exclusive), oldest first."""
        yield from self._select("predictions", device, group, release, since, until, limit,
                                {"role": role} if role else None)

    def reviews(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                since: str | None = None, until: str | None = None, limit: int | None = None) -> Iterator[ReviewRecord]:
        yield from self._select("reviews", device, group, release, since, until, limit)

    def metrics(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                since: str | None = None, until: str | None = None, limit: int | None = None) -> Iterator[MetricsRecord]:
        yield from self._select("metrics", device, group, release, since, until, limit)

    def alerts(self, *, device: str | None = None, group: str | None = None, since: str | None = None,
               until: str | None = None, limit: int | None = None) -> Iterator[AlertRecord]:
        yield from self._select("alerts", device, group, None, since, until, limit)

    def events(self, *, device: str | None = None, group: str | None = None, since: str | None = None,
               until: str | None = None, limit: int | None = None, kind: str | None = None) -> Iterator[EventRecord]:
        yield from self._select("events", device, group, None, since, until, limit, {"kind": kind} if kind else None)

    def latest_events(self, kind: str, device: str | None = None) -> dict[str, EventRecord]:
        """The newest event of `kind` per device (e.g. each device's capability record), by device id."""
        where, params = "kind = ?", [kind]
        if device is not None:
            where += " AND device = ?"
            params.append(device)
        # newest per device in SQL: the events table also holds every activation step and delivery
        rows = self.rows(f"SELECT e.record FROM events e JOIN (SELECT device, max(created_at) AS at FROM events "
                         f"WHERE {where} GROUP BY device) m ON e.device = m.device AND e.created_at = m.at "
                         f"WHERE e.kind = ? ORDER BY e.device, e.id", [*params, kind])
        return {r.device: r for r in (EventRecord.model_validate_json(x["record"]) for x in rows)}

    def control_refused(self, device: str | None = None) -> list[dict[str, Any]]:
        """Control messages (desired states, commands) devices refused and reported as `control.refused` events
        (edge/agent/control.py: unsigned, bad_signature, wrong_device, stale_revision, replayed_command,
        expired_command), per device: count, time, reason and error of the last one."""
        where, params = "kind = ?", ["control.refused"]
        if device is not None:
            where += " AND device = ?"
            params.append(device)
        counts = self.rows(f"SELECT device, COUNT(*) AS n FROM events WHERE {where} GROUP BY device ORDER BY device",
                           params)
        last = self.latest_events("control.refused", device)
        out = []
        for row in counts:
            ev = last.get(row["device"])
            detail = ev.detail if ev is not None else {}
            out.append({"device": row["device"], "count": int(row["n"]), "last_at": ev.created_at if ev else None,
                        "last_reason": str(detail.get("reason", "")), "last_topic": str(detail.get("topic", "")),
                        "last_error": str(detail.get("error", ""))})
        return out

    def record_counts(self, kind: str, *, group: str | None = None, release: str | None = None,
                      since: str | None = None, until: str | None = None,
                      by: tuple[str, ...] = ("device",)) -> list[dict[str, Any]]:
        """How many records of `kind` per value of the `by` columns (e.g. device, or decision), counted by the
        database: for figures that need counts only, without loading every record into Python."""
        allowed = {"device", *RECORD_COLUMNS[kind]} - {"created_at", "top_score", "latency_ms"}
        bad = [c for c in by if c not in allowed]
        if bad or not by:
            raise ValueError(f"cannot count {kind} by {bad or 'nothing'}; columns: {sorted(allowed)}")
        where, params = self._where(kind, None, group, release, since, until)
        cols = ", ".join(by)
        return self.rows(f"SELECT {cols}, count(*) AS n FROM {kind}{where} GROUP BY {cols} ORDER BY {cols}", params)

    def latency_values(self, *, group: str | None = None, release: str | None = None, since: str | None = None,
                       until: str | None = None, role: str | None = None) -> list[float]:
        """The total latencies (ms) of the matching predictions, only that column: percentiles over a large
        window without decoding every record."""
        where, params = self._where("predictions", None, group, release, since, until, {"role": role} if role else None)
        where += (" AND" if where else " WHERE") + " latency_ms IS NOT NULL"
        return [r["latency_ms"] for r in self.rows(f"SELECT latency_ms FROM predictions{where}", params)]
