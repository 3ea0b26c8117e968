"""From alert changes to messages people get. Changes are grouped (per rule, or per rule and device); a group
sends its first message `group_wait_s` after its first alert (so alerts arriving together go together), later
changes at most every `group_interval_s` (so a flapping rule sends one message, with the number of flaps),
and a still-firing alert again after `repeat_interval_s` unless someone acknowledged it. Silenced alerts send
nothing. Each channel takes the alerts at or above its `min_severity`. A failed delivery is retried with
backoff; every message and its outcome per channel is appended to the notification log."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.alerting.book import AlertBook
from fleet.alerting.channels import DeliveryError, PartialDelivery, deliver
from fleet.alerting.config import AlertingConfig, EmailChannel, WebhookChannel
from fleet.alerting.payload import Notification, NotifiedAlert
from fleet.alerting.severity import family, runbook_of
from fleet.protocol import AlertRecord

log = logging.getLogger(__name__)

BACKOFF_S = (10, 20, 40, 80, 160, 300)


class Delivery(BaseModel):
    """One line of the notification log: a message and what each channel did with it."""

    model_config = ConfigDict(extra="forbid")
    notification: Notification
    channel: str
    outcome: Literal["sent", "failed", "gave_up"]
    attempt: int = 1
    error: str = ""
    at: float = Field(default_factory=time.time)


@dataclass
class _Member:
    record: AlertRecord  # the latest raise (or the clear that ended it)
    starts_at: str
    firing: bool
    ends_at: str | None = None
    flaps: int = 0
    notified: bool = False  # a firing message for it went out


@dataclass
class _Group:
    key: str
    labels: dict[str, str]
    first_seen: float
    members: dict[tuple[str, str], _Member] = field(default_factory=dict)
    last_sent: float | None = None
    changed: bool = True


@dataclass
class _Retry:
    channel: WebhookChannel | EmailChannel
    notification: Notification
    attempt: int
    due: float


class NotificationLog:
    """Append-only JSON lines (fsynced), so the dashboard can show what went where, and a restart knows which
    groups were notified when."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, d: Delivery) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(d.model_dump_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def entries(self, limit: int | None = None) -> list[Delivery]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):  # \x85, U+2028 are no line ends
            try:
                out.append(Delivery.model_validate(json.loads(line)))
            except (ValueError, TypeError):  # a line torn by a crash: the rest of the log still counts
                continue
        return out[-limit:] if limit else out


class Notifier:
    def __init__(self, config: AlertingConfig, book: AlertBook, notification_log: NotificationLog,
                 dashboard_url: str | None = None, clock: Callable[[], float] = time.time,
                 send: Callable[[WebhookChannel | EmailChannel, Notification], None] = deliver) -> None:
        self.config, self.book, self.log = config, book, notification_log
        self.dashboard_url = config.dashboard_url or dashboard_url
        self.clock, self.send = clock, send
        self._groups: dict[str, _Group] = {}
        self._retries: list[_Retry] = []
        self._outcomes: Counter[tuple[str, str]] = Counter()
        self._mu = threading.Lock()
        self._restore()

    @property
    def enabled(self) -> bool:
        return bool(self.config.channels)

    def _key(self, rec: AlertRecord) -> tuple[str, dict[str, str]]:
        if self.config.group_by == "rule_device":
            return f"{{}}:{{rule={rec.rule!r}, device={rec.device!r}}}", {"rule": rec.rule, "device": rec.device}
        return f"{{}}:{{rule={rec.rule!r}}}", {"rule": rec.rule}

    def _restore(self) -> None:
        """After a restart: open incidents become members; those a firing message already went out for are
        marked notified, and each group's last message time is taken from the log (no duplicate on restart)."""
        sent = [d for d in self.log.entries() if d.outcome == "sent"]
        notified = {a.id for d in sent for a in d.notification.alerts if a.status == "firing"}
        last = {}
        for d in sent:
            last[d.notification.group_key] = d.at
        for view in self.book.current():
            rec = AlertRecord(id=view.id, device=view.device, rule=view.rule, state="raised", created_at=view.raised_at,
                              value=view.value, threshold=view.threshold, message=view.message,
                              severity=view.severity.value)
            g = self._group(rec, self.clock())
            g.members[(rec.device, rec.rule)] = _Member(rec, rec.created_at, True, notified=rec.id in notified)
            g.last_sent = last.get(g.key)
            g.changed = not g.members[(rec.device, rec.rule)].notified

    def _group(self, rec: AlertRecord, now: float) -> _Group:
        key, labels = self._key(rec)
        if key not in self._groups:
            self._groups[key] = _Group(key, labels, now)
        return self._groups[key]

    def observe(self, changes: list[AlertRecord]) -> None:
        """Take stored raises and clears (from the monitor or a manual resolve)."""
        if not self.enabled:
            return
        now = self.clock()
        with self._mu:
            for rec in changes:
                g = self._group(rec, now)
                k = (rec.device, rec.rule)
                m = g.members.get(k)
                if rec.state == "raised":
                    if m is None:
                        g.members[k] = _Member(rec, rec.created_at, True)
                    elif not m.firing:  # raised again before anyone heard it cleared: one flap more
                        m.record, m.firing, m.ends_at, m.flaps = rec, True, None, m.flaps + 1
                elif m is not None and m.firing:
                    m.record, m.firing, m.ends_at = rec, False, rec.created_at
                g.changed = True

    def _alert(self, m: _Member) -> NotifiedAlert:
        r = m.record
        return NotifiedAlert(id=r.id, device=r.device, rule=r.rule, family=family(r.rule),
                             severity=self.book.severity(r.rule, r.severity), status="firing" if m.firing else "resolved",
                             starts_at=m.starts_at, ends_at=m.ends_at, value=r.value, threshold=r.threshold,
                             message=r.message, runbook=runbook_of(r.rule, self.book.config.runbook_url), flaps=m.flaps)

    def _muted(self, m: _Member) -> bool:
        return self.book.muted_by(m.record.device, m.record.rule) is not None

    def _due(self, g: _Group, now: float) -> Notification | None:
        """The message group `g` sends now, or None. Forgets members whose story is over."""
        firing = [m for m in g.members.values() if m.firing and not self._muted(m)
                  and self.book.acked(m.record.id) is None]
        resolved = [m for m in g.members.values() if not m.firing and m.notified and not self._muted(m)]
        if g.last_sent is None:
            due = now >= g.first_seen + self.config.group_wait_s
        elif g.changed:
            due = now >= g.last_sent + self.config.group_interval_s
        else:
            due = bool(firing) and now >= g.last_sent + self.config.repeat_interval_s
        if not due:
            return None
        # cleared before anyone was told, or muted while clearing: nothing left to say about them
        for k in [k for k, m in g.members.items() if not m.firing and (not m.notified or self._muted(m))]:
            del g.members[k]
        if not firing and not resolved:
            g.changed = False
            return None
        n = Notification(group_key=g.key, group_labels=g.labels, dashboard_url=self.dashboard_url,
                         alerts=[self._alert(m) for m in firing + resolved])
        for m in firing:
            m.notified, m.flaps = True, 0
        for m in resolved:
            del g.members[(m.record.device, m.record.rule)]
        g.last_sent, g.changed = now, False
        return n

    def flush(self) -> list[Notification]:
        """Send what is due now (new messages and retries); returns the messages that were new."""
        if not self.enabled:
            return []
        now = self.clock()
        with self._mu:
            out = [n for n in (self._due(g, now) for g in list(self._groups.values())) if n is not None]
            for k in [k for k, g in self._groups.items() if not g.members]:
                del self._groups[k]
            retries = [r for r in self._retries if r.due <= now]
            self._retries = [r for r in self._retries if r.due > now]
        for n in out:
            for ch in self.config.channels:
                part = n.only(ch.min_severity, ch.send_resolved)
                if part is not None:
                    self._attempt(ch, part, 1)
        for r in retries:
            self._attempt(r.channel, r.notification, r.attempt)
        return out

    def _attempt(self, ch: WebhookChannel | EmailChannel, n: Notification, attempt: int) -> None:
        try:
            self.send(ch, n)
        except DeliveryError as err:
            final = isinstance(err, PartialDelivery) or attempt > self.config.retry_max
            log.warning("alert notification %s to %s failed (attempt %d%s): %s", n.id, ch.name, attempt,
                        ", giving up" if final else "", err)
            with self._mu:
                self._outcomes[(ch.name, "gave_up" if final else "failed")] += 1
            self.log.append(Delivery(notification=n, channel=ch.name, outcome="gave_up" if final else "failed",
                                     attempt=attempt, error=str(err), at=self.clock()))
            if not final:
                wait = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
                with self._mu:
                    self._retries.append(_Retry(ch, n, attempt + 1, self.clock() + wait))
            return
        log.info("alert notification %s (%s, %d alerts) sent to %s", n.id, n.status, len(n.alerts), ch.name)
        with self._mu:
            self._outcomes[(ch.name, "sent")] += 1
        self.log.append(Delivery(notification=n, channel=ch.name, outcome="sent", attempt=attempt, at=self.clock()))

    def outcomes(self) -> dict[tuple[str, str], int]:
        """Delivery attempts since start by (channel, outcome), for /metrics."""
        with self._mu:
            return dict(self._outcomes)

    def pending(self) -> int:
        """Retries waiting (for tests and /metrics)."""
        with self._mu:
            return len(self._retries)
