"""The fleet service's Prometheus /metrics, through prometheus_client: a collector that reads the store at each
scrape. By the book: base units (seconds), cumulative `_total` counters and histograms from which PromQL takes
any window (no precomputed `_1h` figures), one series per real device (no `device="fleet"` sum that would
double-count; `sum()` gives the fleet), HELP on every family, and info metrics for what runs
(`shadowline_build_info`, `shadowline_release_info`). The figures' definitions are docs/field-truth.md's."""

from __future__ import annotations

import json
import logging
import platform
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.analytics import figures
from fleet.analytics.cases import Case, review_cases
from fleet.analytics.pillars import QUEUE_KEYS, PillarOptions
from fleet.analytics.windows import parse_ts
from fleet.protocol import RecordKind, Topics
from runtime import __version__

log = logging.getLogger(__name__)

# Seconds. Inference on a Jetson runs 5-100 ms per frame; a stalled verify stage shows up in the top buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Top scores in tenths, as the pillars' histogram; 0.6 is the low-confidence line of the field guide.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The classic text format that generate_latest writes (and every Prometheus 2.x parses); newer prometheus_client
# versions name 1.0.0 as "latest", which older scrapers do not know.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECORD_KINDS: tuple[RecordKind, ...] = tuple(RecordKind)


def _hist_sql(column: str, scale: float, buckets: tuple[float, ...]) -> str:
    """Cumulative bucket counts of `column / scale` as SQL sums (le is inclusive, as Prometheus's)."""
    parts = [f"SUM(CASE WHEN {column} <= {b * scale!r} THEN 1 ELSE 0 END) AS b{i}" for i, b in enumerate(buckets)]
    return ", ".join(parts) + f", COUNT({column}) AS n, SUM({column}) AS total"


def _buckets(row: dict[str, Any], buckets: tuple[float, ...]) -> list[tuple[str, float]]:
    out = [(repr(b) if b != int(b) else f"{b:.1f}", float(row[f"b{i}"] or 0)) for i, b in enumerate(buckets)]
    return out + [("+Inf", float(row["n"] or 0))]


class FleetCollector(Collector):
    """Everything /metrics says about the fleet, read from `fleet` (a fleet.service.Fleet) at each scrape."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("shadowline_build_info", "Shadowline version of the fleet service (always 1).",
                                  labels=["version", "python", "component"])
        build.add_metric([__version__, platform.python_version(), "fleet"], 1)
        yield build
        broker = GaugeMetricFamily("shadowline_fleet_broker_connected",
                                   "1 when the fleet service is connected to its MQTT broker, else 0.")
        connected = getattr(self.fleet, "broker_connected", None)
        broker.add_metric([], 1.0 if connected is not None and connected() else 0.0)
        yield broker
        yield from self._disk()
        up = GaugeMetricFamily("shadowline_fleet_store_up",
                               "1 when the fleet store answered this scrape's queries, else 0.")
        try:
            families = list(self._store_families())
        except Exception:  # a failing store is what this metric reports; the scrape itself still answers
            log.exception("fleet store failed during a /metrics scrape")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families
        yield from self._notifications()

    def _disk(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self.fleet.config.data_dir)
        except OSError:
            return
        avail = GaugeMetricFamily("shadowline_fleet_data_filesystem_avail_bytes",
                                  "Bytes free to the fleet service on the filesystem of its data directory.")
        avail.add_metric([], float(usage.free))
        size = GaugeMetricFamily("shadowline_fleet_data_filesystem_size_bytes",
                                 "Size in bytes of the filesystem holding the fleet's data directory.")
        size.add_metric([], float(usage.total))
        yield avail
        yield size

    def _store_families(self) -> Iterator[Metric]:
        fleet, store = self.fleet, self.fleet.store
        devices = fleet.devices.list()
        status = Counter(d.get("status") or "unknown" for d in devices)
        fam = GaugeMetricFamily("shadowline_fleet_devices", "Registered devices by connection status.",
                                labels=["status"])
        for s, n in sorted(status.items()):
            fam.add_metric([s], n)
        yield fam
        online = GaugeMetricFamily("shadowline_fleet_device_online",
                                   "1 when the device's MQTT status is online, 0 when offline or unknown.",
                                   labels=["device"])
        seen = GaugeMetricFamily("shadowline_fleet_device_last_seen_timestamp_seconds",
                                 "Unix time the fleet last heard from the device.", labels=["device"])
        groups = GaugeMetricFamily("shadowline_fleet_device_group_info",
                                   "Group membership of each device (always 1; join on device).",
                                   labels=["device", "group"])
        release = GaugeMetricFamily("shadowline_release_info",
                                    "Release each device reports running, as active or candidate (always 1).",
                                    labels=["device", "release", "role", "mode"])
        modes = {r["ref"]: (r.get("spec") or {}).get("mode", "") for r in fleet.releases.list()}
        for d in devices:
            online.add_metric([d["id"]], 1.0 if d.get("status") == "online" else 0.0)
            if d.get("last_seen"):
                seen.add_metric([d["id"]], parse_ts(d["last_seen"]).timestamp())
            for g in d.get("groups") or []:
                groups.add_metric([d["id"], g], 1)
            for role in ("active", "candidate"):
                if d.get(role):
                    release.add_metric([d["id"], d[role], role, modes.get(d[role], "")], 1)
        yield from (online, seen, groups, release)

        records = CounterMetricFamily("shadowline_fleet_records", "Records ingested and stored, by kind.",
                                      labels=["kind"])
        for kind in RECORD_KINDS:
            records.add_metric([kind], store.count(kind))
        yield records
        member = {d["id"]: list(d.get("groups") or []) for d in devices}
        yield from self._predictions(store, member)
        yield from self._reviews(store, member)
        yield from self._cases(store, member)
        yield from self._queue(store)
        yield from self._alerts()
        rollouts = GaugeMetricFamily("shadowline_fleet_rollouts", "Rollouts by state.", labels=["state"])
        for s, n in sorted(Counter(r["state"] for r in fleet.rollouts.list()).items()):
            rollouts.add_metric([s], n)
        yield rollouts
        stats = fleet.ingest.stats.as_dict()
        ingest = CounterMetricFamily("shadowline_fleet_ingest_messages",
                                     "MQTT messages handled by ingest since the service started, by outcome.",
                                     labels=["outcome"])
        ingest.add_metric(["well_formed"], stats["messages"] - stats["malformed"])
        ingest.add_metric(["malformed"], stats["malformed"])
        yield ingest
        dup = CounterMetricFamily("shadowline_fleet_ingest_duplicate_records",
                                  "Redelivered records ignored by id since the service started.")
        dup.add_metric([], stats["duplicates"])
        yield dup
        bad = CounterMetricFamily("shadowline_fleet_malformed_messages",
                                  "Malformed messages stored per device topic kind (all time).", labels=["kind"])
        # every kind a device sends starts at 0, so an increase() over it reads 0 rather than no data
        per_kind: Counter[str] = Counter({k: 0 for k in Topics.FROM_DEVICE})
        for topic, row in store.malformed().items():
            per_kind[topic.rsplit("/", 1)[-1]] += row["count"]
        for k, n in sorted(per_kind.items()):
            bad.add_metric([k], n)
        yield bad
        refused = CounterMetricFamily(
            "shadowline_fleet_refused_records", "Records refused at the edge of ingest and never stored (all time), by "
            "device and reason (not_finite, negative_latency, timestamp_in_future, unknown_prediction, retained, ...; "
            "fleet/validation.py).", labels=["device", "reason"])
        for row in store.refused():
            refused.add_metric([row["device"], row["reason"]], row["count"])
        yield refused
        control = CounterMetricFamily(
            "shadowline_fleet_refused_control_messages", "Desired states and commands a device refused (unsigned, "
            "bad signature, for another device, replayed, expired; its control.refused events), by device.",
            labels=["device"])
        for row in store.control_refused():
            control.add_metric([row["device"]], row["count"])
        yield control

    def _predictions(self, store: Any, member: dict[str, list[str]]) -> Iterator[Metric]:
        low = PillarOptions().low_confidence
        rows = store.rows(
            "SELECT device, release, revision, role, mode, decision, top_label, COUNT(*) AS n, "
            f"SUM(CASE WHEN decision != 'error' AND top_score < {low!r} THEN 1 ELSE 0 END) AS low "
            "FROM predictions GROUP BY device, release, revision, role, mode, decision, top_label")
        preds = CounterMetricFamily(
            "shadowline_fleet_predictions", "Predictions stored, by device, release (name@revision), role "
            "(active or candidate), mode, decision (pass, flag, error) and top class. Production flags of the "
            "active release are the actions sent.", labels=["device", "release", "role", "mode", "decision", "class"])
        lowc = CounterMetricFamily(
            "shadowline_fleet_low_confidence_predictions", f"Predictions (errors left out) whose top score is below "
            f"{low:g}, by device, release and role.", labels=["device", "release", "role"])
        low_sum: Counter[tuple[str, str, str]] = Counter()
        per_group: Counter[tuple[str, str, str, str]] = Counter()
        released: set[tuple[str, str, str, str]] = set()  # (device, release, role, mode) with predictions
        errors_seen: set[tuple[str, str, str, str]] = set()
        for r in rows:
            ref, role = f"{r['release']}@{r['revision']}", r["role"] or "active"
            preds.add_metric([r["device"], ref, role, r["mode"] or "", r["decision"], r["top_label"] or ""], r["n"])
            low_sum[(r["device"], ref, role)] += r["low"] or 0
            released.add((r["device"], ref, role, r["mode"] or ""))
            if r["decision"] == "error":
                errors_seen.add((r["device"], ref, role, r["mode"] or ""))
            for g in member.get(r["device"], []):
                per_group[(g, ref, role, r["decision"])] += r["n"]
                per_group[(g, ref, role, "error")] += 0
        # a release that made no error yet has an error series at 0: the error-rate panels and SLO rules read 0%,
        # not "no data", and a burn rate exists before the first error
        for dev, ref, role, mode in sorted(released - errors_seen):
            preds.add_metric([dev, ref, role, mode, "error", ""], 0)
        for key, n in sorted(low_sum.items()):
            lowc.add_metric(list(key), n)
        yield preds
        yield lowc
        gp = CounterMetricFamily(
            "shadowline_fleet_group_predictions", "Predictions of each device group's members by release, role and "
            "decision (the SLIs per group; a device in two groups counts in both, so do not sum across groups).",
            labels=["group", "release", "role", "decision"])
        for gkey, n in sorted(per_group.items()):
            gp.add_metric(list(gkey), n)
        yield gp
        # latency counts errors too, as the P95 figure does (figures.latencies: their time was spent)
        hist = [("shadowline_fleet_prediction_latency_seconds",
                 "End-to-end latency of each prediction on its device (the record's `total`, errors included), in "
                 "seconds.", "latency_ms", 1000.0, LATENCY_BUCKETS, "1 = 1"),
                ("shadowline_fleet_prediction_confidence",
                 "Top score of each prediction (errors left out), in bins of 0.1.",
                 "top_score", 1.0, CONFIDENCE_BUCKETS, "decision != 'error'")]
        for name, help_text, col, scale, buckets, where in hist:
            fam = HistogramMetricFamily(name, help_text, labels=["device", "release", "role"])
            groups: dict[tuple[str, str, str], list[float]] = {}
            for r in store.rows(f"SELECT device, release, revision, role, {_hist_sql(col, scale, buckets)} "
                                f"FROM predictions WHERE {where} AND {col} IS NOT NULL "
                                "GROUP BY device, release, revision, role ORDER BY device, release, revision, role"):
                ref, role = f"{r['release']}@{r['revision']}", r["role"] or "active"
                fam.add_metric([r["device"], ref, role], _buckets(r, buckets), sum_value=float(r["total"] or 0) / scale)
                if col == "latency_ms":
                    row = [float(r[f"b{i}"] or 0) for i in range(len(buckets))] + [float(r["n"] or 0),
                                                                                     float(r["total"] or 0) / scale]
                    for g in member.get(r["device"], []):
                        acc = groups.setdefault((g, ref, role), [0.0] * len(row))
                        groups[(g, ref, role)] = [a + b for a, b in zip(acc, row)]
            yield fam
            if col == "latency_ms":
                gl = HistogramMetricFamily(
                    "shadowline_fleet_group_prediction_latency_seconds", "End-to-end prediction latency of each "
                    "device group's members, in seconds (a device in two groups counts in both).",
                    labels=["group", "release", "role"])
                for key, row in sorted(groups.items()):
                    bk = [(repr(b) if b != int(b) else f"{b:.1f}", row[i]) for i, b in enumerate(buckets)]
                    gl.add_metric(list(key), bk + [("+Inf", row[len(buckets)])], sum_value=row[-1])
                yield gl

    def _reviews(self, store: Any, member: dict[str, list[str]]) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "shadowline_fleet_reviews", "Inspector verdicts stored, by device, release, verdict and whether the "
            "verdict overrides the model.", labels=["device", "release", "verdict", "override"])
        per_group: Counter[tuple[str, str, str, str]] = Counter()
        for r in store.rows("SELECT device, release, revision, verdict, override, COUNT(*) AS n FROM reviews "
                            "GROUP BY device, release, revision, verdict, override"):
            ref, ov = f"{r['release']}@{r['revision']}", "true" if r["override"] else "false"
            fam.add_metric([r["device"], ref, r["verdict"], ov], r["n"])
            for g in member.get(r["device"], []):
                per_group[(g, ref, r["verdict"], ov)] += r["n"]
        yield fam
        gr = CounterMetricFamily(
            "shadowline_fleet_group_reviews", "Inspector verdicts on each device group's members by release, verdict "
            "and override (a device in two groups counts in both).", labels=["group", "release", "verdict", "override"])
        for key, n in sorted(per_group.items()):
            gr.add_metric(list(key), n)
        yield gr

    def _cases(self, store: Any, member: dict[str, list[str]]) -> Iterator[Metric]:
        """Reviewed and overridden cases as docs/field-truth.md defines them (fleet.analytics.cases and
        figures.override_rate): one case per prediction however many verdicts it got, decided by the fleet's
        adjudicators. Counting verdict records instead would count an upheld override twice. Gauges, because a
        case stops being an override when an adjudicator overturns it (and stops counting when a later verdict
        calls its image bad): the override ratio over a window is delta(overridden) / delta(reviewed)."""
        per: dict[tuple[str, str], list[Case]] = defaultdict(list)
        for c in review_cases(store.reviews(), self.fleet.config.adjudicators):
            per[(c.device, f"{c.release}@{c.revision}")].append(c)
        reviewed = GaugeMetricFamily(
            "shadowline_fleet_reviewed_cases", "Predictions with a verdict (one case each, bad images left out), by "
            "device and release: the denominator of the override rate.", labels=["device", "release"])
        overridden = GaugeMetricFamily(
            "shadowline_fleet_overridden_cases", "Reviewed cases whose deciding verdict (an adjudicator's, else the "
            "line inspector's) overrides the model, by device and release.", labels=["device", "release"])
        unresolved = GaugeMetricFamily(
            "shadowline_fleet_unresolved_disputes", "Cases where the line verdicts and the model disagree and no "
            "adjudicator decided, by device and release.", labels=["device", "release"])
        groups: dict[tuple[str, str], list[int]] = {}
        for (dev, ref), cases in sorted(per.items()):
            rate = figures.override_rate(cases)
            open_ = figures.unresolved_disputes(cases)
            reviewed.add_metric([dev, ref], rate.reviews)
            overridden.add_metric([dev, ref], rate.overrides)
            unresolved.add_metric([dev, ref], open_)
            for g in member.get(dev, []):
                acc = groups.setdefault((g, ref), [0, 0])
                acc[0] += rate.reviews
                acc[1] += rate.overrides
        yield from (reviewed, overridden, unresolved)
        g_reviewed = GaugeMetricFamily(
            "shadowline_fleet_group_reviewed_cases", "Reviewed cases of each device group's members by release (a "
            "device in two groups counts in both).", labels=["group", "release"])
        g_overridden = GaugeMetricFamily(
            "shadowline_fleet_group_overridden_cases", "Overridden cases of each device group's members by release "
            "(the override-based accuracy SLI).", labels=["group", "release"])
        for (g, ref), (n, k) in sorted(groups.items()):
            g_reviewed.add_metric([g, ref], n)
            g_overridden.add_metric([g, ref], k)
        yield g_reviewed
        yield g_overridden

    def _queue(self, store: Any) -> Iterator[Metric]:
        depth = GaugeMetricFamily("shadowline_fleet_device_queue_depth",
                                  "Backlog the device reported in its latest metrics record (queue_depth, else "
                                  "outbox_depth or outbox_pending).", labels=["device"])
        at = GaugeMetricFamily("shadowline_fleet_device_metrics_timestamp_seconds",
                               "Unix time of the device's latest metrics record.", labels=["device"])
        rows = store.rows("SELECT m.device, m.created_at, m.record FROM metrics m JOIN (SELECT device, "
                          "MAX(created_at) AS t FROM metrics GROUP BY device) x ON m.device = x.device AND "
                          "m.created_at = x.t ORDER BY m.device")
        done = set()
        for r in rows:
            if r["device"] in done:
                continue
            done.add(r["device"])
            values = json.loads(r["record"]).get("values") or {}
            key = next((k for k in QUEUE_KEYS if k in values), None)
            if key is not None:
                depth.add_metric([r["device"]], float(values[key]))
            at.add_metric([r["device"]], parse_ts(r["created_at"]).timestamp())
        yield depth
        yield at

    def _alerts(self) -> Iterator[Metric]:
        book = getattr(self.fleet, "alerts", None)
        if book is None:
            return
        fam = GaugeMetricFamily("shadowline_fleet_alerts", "Open alerts by severity and status (firing, "
                                "acknowledged, silenced).", labels=["severity", "status"])
        counts = Counter((v.severity.value, v.status) for v in book.current())
        for sev in ("critical", "warning", "info"):
            for st in ("firing", "acknowledged", "silenced"):
                fam.add_metric([sev, st], counts.get((sev, st), 0))
        yield fam

    def _notifications(self) -> Iterator[Metric]:
        notifier = getattr(self.fleet, "notifier", None)
        if notifier is None:
            return
        fam = CounterMetricFamily("shadowline_fleet_alert_notifications",
                                  "Alert notification delivery attempts since the service started, by channel and "
                                  "outcome (sent, failed, gave_up).", labels=["channel", "outcome"])
        counts = {(ch.name, outcome): 0 for ch in notifier.config.channels for outcome in ("sent", "failed", "gave_up")}
        counts.update(notifier.outcomes())
        for (channel, outcome), n in sorted(counts.items()):
            fam.add_metric([channel, outcome], n)
        yield fam


def render_metrics(fleet: Any) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of `fleet`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    return generate_latest(registry)
