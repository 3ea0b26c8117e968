"""The alert book: every incident with the people's actions applied (severity, acknowledged, silenced,
resolved), and the actions themselves. Incidents come from the store's AlertRecords (raised ... cleared per
device and rule); actions from an append-only ActionLog kept in memory as well, so the notifier can ask
"is this muted?" on every tick without reading files."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from fleet.alerting.actions import ActionLog
from fleet.alerting.config import AlertingConfig
from fleet.alerting.model import MAX_SILENCE_S, Ack, Action, AlertView, Expire, Resolve, Silence, Status
from fleet.alerting.severity import Severity, family, runbook_of, severity_of
from fleet.analytics.windows import parse_ts
from fleet.protocol import AlertRecord
from runtime.errors import ConfigError, Conflict, NotFound


@dataclass
class Incident:
    raised: AlertRecord
    cleared: AlertRecord | None = None


def incidents(history: Iterable[AlertRecord]) -> list[Incident]:
    """Pair each raise with the clear that ends it, per (device, rule), oldest first. A second raise while one is
    open (a device repeating itself) belongs to the open incident; a clear with nothing open is ignored."""
    out: list[Incident] = []
    open_: dict[tuple[str, str], Incident] = {}
    for a in sorted(history, key=lambda a: (parse_ts(a.created_at), a.state != "raised")):
        key = (a.device, a.rule)
        if a.state == "raised":
            if key not in open_:
                inc = Incident(a)
                open_[key] = inc
                out.append(inc)
        elif key in open_:
            open_.pop(key).cleared = a
    return out


class AlertBook:
    """`store` is anything with `alerts()` and `insert_records("alerts", ...)` (the fleet Store). `lock` is the
    monitor's: a manual resolve and an evaluation never interleave. `announce` hands a manual resolve's cleared
    record on like every other change (the monitor's: MQTT and the notifier)."""

    def __init__(self, store: Any, log: ActionLog, config: AlertingConfig | None = None,
                 lock: threading.Lock | None = None, announce: Callable[[list[AlertRecord]], None] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store, self.log = store, log
        self.config = config or AlertingConfig()
        self.lock = lock or threading.Lock()
        self.announce = announce
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._mu = threading.Lock()
        self._acks: dict[str, Ack] = {}
        self._silences: dict[str, Silence] = {}
        self._resolves: dict[str, Resolve] = {}
        for action in log.entries():
            self._apply(action)

    # -- reading -------------------------------------------------------------------------------------------------
    def severity(self, rule: str, recorded: str | None = None) -> Severity:
        """The severity stored on the record at raise time, else the configured one."""
        return Severity(recorded) if recorded in Severity.__members__ else severity_of(rule, self.config.severity)

    def muted_by(self, device: str, rule: str, at: datetime | None = None) -> Silence | None:
        """The active silence covering (device, rule), the one lasting longest if several do."""
        at = at or self.clock()
        with self._mu:
            hits = [s for s in self._silences.values() if s.active(at) and s.matches(device, rule)]
        return max(hits, key=lambda s: parse_ts(s.until)) if hits else None

    def acked(self, alert_id: str) -> Ack | None:
        with self._mu:
            return self._acks.get(alert_id)

    def view(self, inc: Incident, at: datetime | None = None) -> AlertView:
        r, c = inc.raised, inc.cleared
        ack = self.acked(r.id)
        silence = None if c else self.muted_by(r.device, r.rule, at)
        status: Status = "resolved" if c else "silenced" if silence else "acknowledged" if ack else "firing"
        with self._mu:
            resolved_by = self._resolves.get(r.id)
        return AlertView(id=r.id, device=r.device, rule=r.rule, family=family(r.rule),
                         severity=self.severity(r.rule, getattr(r, "severity", None)), status=status,
                         raised_at=r.created_at, cleared_at=c.created_at if c else None, value=r.value,
                         threshold=r.threshold, message=r.message, clear_message=c.message if c else "",
                         runbook=runbook_of(r.rule, self.config.runbook_url), ack=ack, silence=silence,
                         resolved_by=resolved_by if c else None)

    def current(self) -> list[AlertView]:
        """Open incidents, most urgent first: severity, then not yet taken (firing before acknowledged before
        silenced), then newest."""
        at = self.clock()
        views = [self.view(i, at) for i in incidents(self.store.alerts()) if i.cleared is None]
        order = {"firing": 0, "acknowledged": 1, "silenced": 2, "resolved": 3}
        views.sort(key=lambda v: v.raised_at, reverse=True)
        views.sort(key=lambda v: (-v.severity.rank, order[v.status]))
        return views

    def history(self, limit: int = 200) -> list[AlertView]:
        """Every incident once (raised, and cleared if it was), newest first."""
        at = self.clock()
        incs = incidents(self.store.alerts())
        return [self.view(i, at) for i in reversed(incs[-limit:])]

    def get(self, alert_id: str) -> AlertView:
        for inc in incidents(self.store.alerts()):
            if inc.raised.id == alert_id:
                return self.view(inc)
        raise NotFound(f"no alert {alert_id!r} (ids are those of the raising records: see the alerts list)")

    def silences(self, include_ended: bool = False) -> list[Silence]:
        """Silences, newest first; only those in force unless `include_ended`."""
        at = self.clock()
        with self._mu:
            out = [s for s in self._silences.values() if include_ended or s.active(at)]
        return sorted(out, key=lambda s: parse_ts(s.at), reverse=True)

    # -- acting --------------------------------------------------------------------------------------------------
    def ack(self, alert_id: str, by: str, note: str = "") -> AlertView:
        view = self.get(alert_id)
        if view.status == "resolved":
            raise Conflict(f"alert {alert_id} is resolved already ({view.cleared_at}); nothing to acknowledge")
        if view.ack is not None:
            raise Conflict(f"alert {alert_id} was acknowledged by {view.ack.by} at {view.ack.at}")
        self._record(Ack(alert=alert_id, by=by, note=note))
        return self.get(alert_id)

    def silence(self, by: str, reason: str, duration: timedelta, device: str = "*", rule: str = "*") -> Silence:
        secs = duration.total_seconds()
        if not 0 < secs <= MAX_SILENCE_S:
            raise ConfigError(f"a silence lasts more than 0 s and at most {MAX_SILENCE_S // 86400} days; "
                              f"got {secs:g} s")
        if not reason.strip():
            raise ConfigError("a silence needs a reason (it is shown to everyone the alert would have reached)")
        now = self.clock()
        s = Silence(device=device, rule=rule, by=by, reason=reason, at=now.isoformat(),
                    until=(now + duration).isoformat())
        self._record(s)
        return s

    def expire(self, silence_id: str, by: str) -> Silence:
        with self._mu:
            s = self._silences.get(silence_id)
        if s is None:
            raise NotFound(f"no silence {silence_id!r}")
        if not s.active(self.clock()):
            raise Conflict(f"silence {silence_id} is not in force (until {s.until})")
        self._record(Expire(silence=silence_id, by=by, at=self.clock().isoformat()))
        with self._mu:
            return self._silences[silence_id]

    def resolve(self, alert_id: str, by: str, note: str = "") -> AlertView:
        """Close an open incident by hand: a cleared AlertRecord is stored (and published), so the monitor's
        next pass raises a new incident if the condition still holds."""
        with self.lock:
            view = self.get(alert_id)
            if view.status == "resolved":
                raise Conflict(f"alert {alert_id} is resolved already ({view.cleared_at})")
            at = self.clock().isoformat()
            self._record(Resolve(alert=alert_id, by=by, note=note, at=at))
            cleared = AlertRecord(device=view.device, rule=view.rule, state="cleared", created_at=at,
                                  value=view.value, threshold=view.threshold, severity=view.severity.value,
                                  message=f"resolved by {by}" + (f": {note}" if note else ""))
            self.store.insert_records("alerts", [cleared.model_dump(mode="json")])
        if self.announce is not None:
            self.announce([cleared])
        return self.get(alert_id)

    def _record(self, action: Action) -> None:
        self.log.append(action)  # durable first: an action the page confirmed survives a crash
        self._apply(action)

    def _apply(self, action: Action) -> None:
        with self._mu:
            if isinstance(action, Ack):
                self._acks.setdefault(action.alert, action)
            elif isinstance(action, Silence):
                self._silences[action.id] = action
            elif isinstance(action, Expire):
                s = self._silences.get(action.silence)
                if s is not None:
                    self._silences[s.id] = s.model_copy(update={"until": min(s.until, action.at, key=parse_ts)})
            elif isinstance(action, Resolve):
                self._resolves.setdefault(action.alert, action)
