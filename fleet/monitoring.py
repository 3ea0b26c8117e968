"""The fleet's monitoring pass: run the alert rules (fleet.analytics.alerts.evaluate_fleet) over the stored records,
store the alerts that were raised or cleared (with their configured severity), publish each change on the
fleet-level alerts topic and hand it to the observers (the notifier). The fleet service calls it from its monitor
loop every `monitor_interval_s`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from fleet.alerting.severity import severity_of
from fleet.analytics.alerts import evaluate_fleet
from fleet.analytics.pillars import PillarOptions
from fleet.config import FleetConfig
from fleet.protocol import AlertRecord, Topics, encode
from fleet.store import Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]


class Monitor:
    def __init__(self, store: Store, topics: Topics, config: FleetConfig, publish: Publish) -> None:
        self.store, self.topics, self.config, self.publish = store, topics, config, publish
        # the dashboard's "evaluate now" and the loop may run together: one pass at a time, so an alert that one
        # pass raised is in the history the other reads, and is never raised twice
        self.lock = threading.Lock()
        self.observers: list[Callable[[list[AlertRecord]], None]] = []

    def run_once(self, now: datetime | None = None) -> list[AlertRecord]:
        """One evaluation at `now` (default: the current time): the alerts that changed state, stored and
        published (stored first, so a broker outage loses no alert; publishing failures are logged)."""
        now = now or datetime.now(timezone.utc)
        since = (now - timedelta(days=self.config.monitor_lookback_days)).isoformat()
        with self.lock:
            changes = evaluate_fleet(self.store.predictions(since=since), self.store.reviews(since=since),
                                     self.store.metrics(since=since), self.store.alerts(), now,
                                     self.config.monitor_window, self.config.alert_rules,
                                     PillarOptions(adjudicators=self.config.adjudicators))
            sev = self.config.alerting.severity
            changes = [a.model_copy(update={"severity": severity_of(a.rule, sev).value}) for a in changes]
            if changes:
                self.store.insert_records("alerts", [a.model_dump(mode="json") for a in changes])
        for a in changes:
            log.info("alert %s: %s %s (%s)", a.state, a.device, a.rule, a.message)
        self.announce(changes)
        return changes

    def announce(self, changes: list[AlertRecord]) -> None:
        """Publish stored changes on `{prefix}/fleet/alerts` (each raise and clear, for machines) and hand them to
        the observers (the notifier, for people). A publish failure is logged: the alert is stored already."""
        topic = self.topics.fleet("alerts")
        for a in changes:
            try:
                self.publish(topic, encode(a), False)
            except Exception:  # stored already; the dashboard and API show it even if no subscriber heard it
                log.exception("publishing alert %s failed", a.id)
        for observe in self.observers:
            try:
                observe(changes)
            except Exception:  # a notifier bug must not stop monitoring
                log.exception("alert observer failed")
