"""The alert state model over a real SQLite store and a real action log: incidents, severity, acknowledge,
silence, resolve; the actions survive a restart; a manual resolve of a live condition is raised again by the
next monitoring pass."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fleet.alerting import AlertBook, AlertingConfig, JsonlActionLog, Severity, incidents, runbook_of, severity_of
from fleet.config import FleetConfig
from fleet.protocol import AlertRecord, PredictionRecord, Topics
from fleet.service import Fleet
from fleet.store import Store
from runtime.errors import ConfigError, Conflict, NotFound

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _rec(device: str, rule: str, state: str, minutes: float, **kw) -> AlertRecord:
    return AlertRecord(device=device, rule=rule, state=state, created_at=(T0 + timedelta(minutes=minutes)).isoformat(),
                       **kw)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "fleet.db")
    yield s
    s.close()


def _book(store: Store, tmp_path: Path, clock: Clock, **cfg) -> AlertBook:
    return AlertBook(store, JsonlActionLog(tmp_path / "actions.jsonl"), AlertingConfig(**cfg), clock=clock)


def test_incidents_pair_raises_with_their_clears():
    hist = [_rec("a", "error_rate", "raised", 0), _rec("a", "error_rate", "raised", 1),  # a repeat: same incident
            _rec("b", "error_rate", "cleared", 2),  # nothing open: ignored
            _rec("a", "error_rate", "cleared", 3), _rec("a", "error_rate", "raised", 4)]
    got = incidents(reversed(hist))  # order of the input does not matter, time does
    assert [(i.raised.id, i.cleared.id if i.cleared else None) for i in got] == [
        (hist[0].id, hist[3].id), (hist[4].id, None)]


def test_severity_per_rule_defaults_and_overrides():
    assert severity_of("error_rate") is Severity.critical
    assert severity_of("queue_growing") is Severity.critical
    assert severity_of("override_rate:Defective|pcb-line@2") is Severity.warning
    assert severity_of("something_new") is Severity.warning
    ov = {"override_rate": Severity.critical, "override_rate:Normal": Severity.info}
    assert severity_of("override_rate:Defective", ov) is Severity.critical
    assert severity_of("override_rate:Normal|pcb-line@2", ov) is Severity.info  # the rule before the family
    assert runbook_of("queue_growing", "https://ops.example/runbooks.html") == \
        "https://ops.example/runbooks.html#queue-backlog"


def test_current_is_sorted_by_urgency_and_history_lists_each_incident_once(store, tmp_path):
    clock = Clock(T0 + timedelta(hours=1))
    store.insert_records("alerts", [
        _rec("a", "override_rate", "raised", 1, severity="warning"),
        _rec("a", "error_rate", "raised", 2),  # no severity recorded (a device's own alert): from the config
        _rec("b", "class_share:Defective", "raised", 3, severity="warning"),
        _rec("b", "latency:total", "raised", 4, severity="warning"),
        _rec("b", "latency:total", "cleared", 5, severity="warning")])
    book = _book(store, tmp_path, clock)
    cur = book.current()
    assert [(v.device, v.rule, v.severity.value, v.status) for v in cur] == [
        ("a", "error_rate", "critical", "firing"),
        ("b", "class_share:Defective", "warning", "firing"),  # newer warning first
        ("a", "override_rate", "warning", "firing")]
    assert cur[0].runbook == "docs/runbooks.md#error-rate"
    hist = book.history()
    assert [(v.rule, v.status) for v in hist] == [("latency:total", "resolved"), ("class_share:Defective", "firing"),
                                                  ("error_rate", "firing"), ("override_rate", "firing")]
    assert hist[0].cleared_at == (T0 + timedelta(minutes=5)).isoformat()


def test_acknowledge_silence_resolve_and_restart(store, tmp_path):
    clock = Clock(T0 + timedelta(hours=1))
    raised = [_rec("a", "error_rate", "raised", 0), _rec("b", "override_rate:Defective", "raised", 0),
              _rec("*", "override_rate:Defective", "raised", 0)]
    store.insert_records("alerts", raised)
    announced: list[list[AlertRecord]] = []
    book = _book(store, tmp_path, clock)
    book.announce = announced.append

    v = book.ack(raised[0].id, "olga", "looking at the camera")
    assert v.status == "acknowledged" and v.ack.by == "olga" and v.ack.note == "looking at the camera"
    with pytest.raises(Conflict, match="acknowledged by olga"):
        book.ack(raised[0].id, "piet")
    with pytest.raises(NotFound):
        book.ack("no-such-alert", "olga")

    with pytest.raises(ConfigError, match="reason"):
        book.silence("olga", "  ", timedelta(hours=1))
    with pytest.raises(ConfigError, match="at most 31 days"):
        book.silence("olga", "holiday", timedelta(days=40))
    s = book.silence("olga", "retraining the Defective class", timedelta(hours=2), rule="override_rate:*")
    assert {v.device: v.status for v in book.current() if v.family == "override_rate"} == {"b": "silenced",
                                                                                          "*": "silenced"}
    assert book.muted_by("c", "override_rate:Normal") == s and book.muted_by("c", "error_rate") is None
    clock.t += timedelta(hours=3)  # the silence ran out
    assert book.muted_by("b", "override_rate:Defective") is None and book.silences() == []
    s2 = book.silence("olga", "maintenance on b", timedelta(hours=1), device="b")
    assert book.get(raised[1].id).status == "silenced"
    ended = book.expire(s2.id, "olga")
    assert book.get(raised[1].id).status == "firing" and ended.until == clock.t.isoformat()
    with pytest.raises(Conflict):
        book.expire(s2.id, "olga")

    v = book.resolve(raised[1].id, "olga", "camera cleaned")
    assert v.status == "resolved" and v.resolved_by.by == "olga"
    cleared = [a for a in store.alerts() if a.state == "cleared"]
    assert len(cleared) == 1 and cleared[0].message == "resolved by olga: camera cleaned"
    assert announced == [cleared]
    with pytest.raises(Conflict, match="resolved already"):
        book.resolve(raised[1].id, "olga")
    with pytest.raises(Conflict, match="resolved already"):
        book.ack(raised[1].id, "olga")

    # a restart reads the same state back from the store and the action log
    again = _book(store, tmp_path, clock)
    assert [(v.id, v.status) for v in again.current()] == [(v.id, v.status) for v in book.current()]
    assert again.get(raised[0].id).ack.by == "olga" and len(again.silences(include_ended=True)) == 2


def test_a_torn_last_line_is_skipped_and_the_next_action_stays_whole(store, tmp_path):
    clock = Clock(T0)
    store.insert_records("alerts", [r := _rec("a", "error_rate", "raised", 0)])
    log = tmp_path / "actions.jsonl"
    log.write_text('{"kind": "ack", "alert": "x", "by": "olga", "at": "2026-11-02T08:00:00+00:00"}\n{"kind": "ac')
    book = _book(store, tmp_path, clock)
    book.ack(r.id, "piet")
    assert _book(store, tmp_path, clock).get(r.id).ack.by == "piet"
    log.write_text(log.read_text() + "garbage\n" + '{"kind": "ack", "alert": "y", "by": "z", "at": "x"}\n')
    with pytest.raises(ConfigError, match=r"actions.jsonl:\d+: not an alert action"):
        _book(store, tmp_path, clock)


def test_manual_resolve_of_a_live_condition_is_raised_again(tmp_path, keys):
    """Resolve is for "fixed"; if the rule still holds, the next pass opens a new incident."""
    published: list[tuple[str, bytes, bool]] = []
    fleet = Fleet(FleetConfig(data_dir=tmp_path / "fleet", trust_store=keys["trust"]),
                  publish=lambda t, p, r: published.append((t, p, r)))
    try:
        now = datetime.now(timezone.utc)
        preds = [PredictionRecord(device="cam-1", created_at=(now - timedelta(minutes=30, seconds=-i)).isoformat(),
                                  source="http", release="seal", revision=1, mode="production",
                                  decision="error" if i < 3 else "pass", top_label="Normal", top_score=0.9,
                                  latency_ms={"total": 10.0}) for i in range(30)]
        fleet.store.insert_records("predictions", preds)
        first = fleet.monitor.run_once(now)
        assert {(a.device, a.rule, a.state, a.severity) for a in first} == {("cam-1", "error_rate", "raised", "critical"),
                                                                            ("*", "error_rate", "raised", "critical")}
        target = next(a for a in first if a.device == "cam-1")
        fleet.alerts.resolve(target.id, "olga", "restarted the camera")
        topic = Topics("shadowline").fleet("alerts")
        sent = [AlertRecord.model_validate_json(p) for t, p, _ in published if t == topic]
        assert [(a.device, a.state) for a in sent][-1] == ("cam-1", "cleared")
        again = fleet.monitor.run_once(now + timedelta(seconds=1))
        assert [(a.device, a.state) for a in again] == [("cam-1", "raised")] and again[0].id != target.id
        assert fleet.alerts.get(target.id).status == "resolved"
        assert fleet.alerts.get(again[0].id).status == "firing"
    finally:
        fleet.close()
