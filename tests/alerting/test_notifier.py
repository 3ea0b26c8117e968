"""Notifications delivered for real: a local SMTP server (aiosmtpd) and an HTTP receiver on loopback. Time is a
settable clock handed to the notifier, so grouping, flapping and repeats are judged without waiting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fleet.alerting import AlertBook, AlertingConfig, JsonlActionLog, NotificationLog, Notifier, Severity, alertmanager
from fleet.protocol import AlertRecord
from fleet.store import Store
from runtime.errors import ConfigError
from tests.alerting.receivers import HttpReceiver, SmtpReceiver
from tests.conftest import free_port

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)


class Clock:
    """Seconds since the epoch for the notifier, the same instant as a datetime for the book."""

    def __init__(self) -> None:
        self.s = T0.timestamp()

    def __call__(self) -> float:
        return self.s

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.s, timezone.utc)


class World:
    def __init__(self, tmp: Path, channels: list[dict], **cfg) -> None:
        self.clock = Clock()
        self.store = Store(tmp / "fleet.db")
        self.config = AlertingConfig(channels=channels, runbook_url="https://ops.example/runbooks.html",
                                     group_wait_s=30, group_interval_s=300, repeat_interval_s=3600, **cfg)
        self.book = AlertBook(self.store, JsonlActionLog(tmp / "actions.jsonl"), self.config, clock=self.clock.dt)
        self.log = NotificationLog(tmp / "notifications.jsonl")
        self.notifier = Notifier(self.config, self.book, self.log, dashboard_url="http://fleet.plant:8700",
                                 clock=self.clock)

    def change(self, device: str, rule: str, state: str, severity: str = "critical", **kw) -> AlertRecord:
        rec = AlertRecord(device=device, rule=rule, state=state, created_at=self.clock.dt().isoformat(),
                          severity=severity, **kw)
        self.store.insert_records("alerts", [rec])
        self.notifier.observe([rec])
        return rec

    def after(self, seconds: float) -> list:
        self.clock.s += seconds
        return self.notifier.flush()


def mail_text(mail) -> str:
    """The text of a received e-mail, transfer encoding undone."""
    return mail.get_content()


@pytest.fixture
def receivers():
    with SmtpReceiver() as smtp, HttpReceiver() as http:
        yield smtp, http


def _channels(smtp: SmtpReceiver, http: HttpReceiver, **kw) -> list[dict]:
    return [{"kind": "webhook", "name": "ops-hook", "url": http.url, **kw},
            {"kind": "email", "name": "ops-mail", "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "security": "none",
             "sender": "fleet@plant.example", "to": ["oncall@plant.example", "qa@plant.example"], **kw}]


def test_a_group_is_delivered_by_email_and_webhook(tmp_path, receivers):
    smtp, http = receivers
    w = World(tmp_path, _channels(smtp, http))
    a = w.change("cam-1", "error_rate", "raised", value=0.1, threshold=0.01, message="error rate 10.00% over 30")
    assert w.after(10) == [] and http.posts == [] and smtp.messages == []  # group_wait gathers the others
    b = w.change("cam-2", "error_rate", "raised", value=0.05, threshold=0.01, message="error rate 5.00% over 40")
    sent = w.after(25)
    assert len(sent) == 1 and {x.id for x in sent[0].alerts} == {a.id, b.id}

    [body] = http.delivered()
    assert http.posts[0]["path"] == "/hook" and http.posts[0]["headers"]["Content-Type"] == "application/json"
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "ops-hook"
    assert body["groupLabels"] == {"rule": "error_rate"}
    assert body["commonLabels"] == {"alertname": "error_rate", "rule": "error_rate", "severity": "critical",
                                    "service": "shadowline-fleet"}
    assert body["commonAnnotations"] == {"runbook_url": "https://ops.example/runbooks.html#error-rate",
                                         "threshold": "0.01"}
    by_dev = {x["labels"]["device"]: x for x in body["alerts"]}
    assert by_dev["cam-1"]["annotations"]["value"] == "0.1" and by_dev["cam-1"]["endsAt"] == "0001-01-01T00:00:00Z"
    assert by_dev["cam-1"]["generatorURL"] == f"http://fleet.plant:8700/dashboard/alerts/{a.id}"
    assert body["externalURL"] == "http://fleet.plant:8700/dashboard/alerts"

    [(rcpt, mail)] = smtp.messages
    assert rcpt == ["oncall@plant.example", "qa@plant.example"] and mail["From"] == "fleet@plant.example"
    assert mail["Subject"] == "[shadowline] [FIRING:2] rule=error_rate (critical)"
    text = mail_text(mail)
    assert "[critical] error_rate on device cam-1: error rate 10.00% over 30" in text
    assert "value 0.05, limit 0.01" in text and "runbook: https://ops.example/runbooks.html#error-rate" in text
    assert [d.outcome for d in w.log.entries()] == ["sent", "sent"]

    # nothing new: nothing sent until the repeat interval; then once more, as the alerts still fire
    assert w.after(600) == [] and len(http.posts) == 1
    assert len(w.after(3600)) == 1 and len(http.delivered()) == 2 and len(smtp.messages) == 2

    # both clear: one "resolved" message after the group interval
    w.change("cam-1", "error_rate", "cleared", value=0.0)
    w.change("cam-2", "error_rate", "cleared", value=0.0)
    assert w.after(10) == []
    [done] = w.after(300)
    assert done.status == "resolved" and http.delivered()[-1]["status"] == "resolved"
    assert {x["endsAt"] != "0001-01-01T00:00:00Z" for x in http.delivered()[-1]["alerts"]} == {True}
    assert smtp.messages[-1][1]["Subject"].startswith("[shadowline] [RESOLVED]")
    assert w.after(10000) == []  # the story is over


def test_a_flapping_rule_sends_one_message(tmp_path, receivers):
    smtp, http = receivers
    w = World(tmp_path, _channels(smtp, http))
    w.change("cam-1", "queue_growing", "raised", message="queue depth over the last 4 readings: [1, 2, 3, 4]")
    w.after(31)
    assert len(http.delivered()) == 1
    for _ in range(5):  # raise, clear, raise ... well inside one group interval
        w.change("cam-1", "queue_growing", "cleared")
        w.after(20)
        w.change("cam-1", "queue_growing", "raised")
        w.after(20)
    assert len(http.delivered()) == 1 and len(smtp.messages) == 1  # nothing more during the flapping
    w.after(300)
    bodies = http.delivered()
    assert len(bodies) == 2 and len(smtp.messages) == 2
    [flap] = bodies[1]["alerts"]
    assert flap["status"] == "firing" and flap["annotations"]["flaps"] == "5"
    assert "raised 5 times since the last message (flapping)" in mail_text(smtp.messages[1][1])


def test_acknowledged_alerts_do_not_repeat_and_silenced_ones_send_nothing(tmp_path, receivers):
    smtp, http = receivers
    w = World(tmp_path, _channels(smtp, http))
    a = w.change("cam-1", "error_rate", "raised")
    w.after(31)
    w.book.ack(a.id, "olga")
    assert w.after(3600 * 3) == [] and len(http.posts) == 1  # taken: no repeats

    w.book.silence("olga", "lens replaced, recalibrating", timedelta(hours=1), device="cam-2")
    w.change("cam-2", "error_rate", "raised")
    w.change("cam-2", "override_rate", "raised", severity="warning")
    assert w.after(31) == [] and len(http.posts) == 1
    w.clock.s += 3600  # the silence is over and the alerts still fire: now they are sent
    assert len(w.after(301)) == 2 and len(http.delivered()) == 3


def test_channels_take_their_severities(tmp_path, receivers):
    smtp, http = receivers
    chans = [{"kind": "webhook", "name": "pager", "url": http.url, "min_severity": "critical",
              "send_resolved": False},
             {"kind": "email", "name": "team", "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "security": "none",
              "sender": "fleet@plant.example", "to": ["team@plant.example"], "min_severity": "info"}]
    w = World(tmp_path, chans, group_by="rule_device")
    w.change("cam-1", "class_share:Defective", "raised", severity="warning")
    w.change("cam-1", "error_rate", "raised", severity="critical")
    w.after(31)
    assert [b["commonLabels"]["rule"] for b in http.delivered()] == ["error_rate"]  # the pager takes criticals
    assert sorted(m["Subject"] for _, m in smtp.messages) == [
        "[shadowline] [FIRING:1] rule=class_share:Defective, device=cam-1 (warning)",
        "[shadowline] [FIRING:1] rule=error_rate, device=cam-1 (critical)"]
    w.change("cam-1", "error_rate", "cleared")
    w.after(301)
    assert len(http.delivered()) == 1 and len(smtp.messages) == 3  # no resolved message for the pager


def test_a_failed_delivery_is_retried_until_the_receiver_takes_it(tmp_path):
    port = free_port()  # nothing listens there yet: connection refused
    smtp_port = free_port()
    chans = [{"kind": "webhook", "name": "hook", "url": f"http://127.0.0.1:{port}/hook"},
             {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "security": "none",
              "sender": "fleet@plant.example", "to": ["oncall@plant.example"], "timeout_s": 2}]
    w = World(tmp_path, chans, retry_max=3)
    w.change("*", "error_rate", "raised")
    w.after(31)
    assert [(d.channel, d.outcome) for d in w.log.entries()] == [("hook", "failed"), ("mail", "failed")]
    assert "ConnectError" in w.log.entries()[0].error and w.notifier.pending() == 2
    with HttpReceiver(port) as http:
        http.status = 503  # up, but refusing: still a failure
        w.after(10)
        assert [p["status"] for p in http.posts] == [503]
        http.status = 200
        w.after(20)
        assert len(http.delivered()) == 1 and http.delivered()[0]["alerts"][0]["labels"]["device"] == "*"
    # the mail server never comes: after retry_max retries the notifier gives up and says so
    for _ in range(5):
        w.after(300)
    mail = [d for d in w.log.entries() if d.channel == "mail"]
    assert [d.outcome for d in mail] == ["failed", "failed", "failed", "gave_up"] and w.notifier.pending() == 0


def test_a_restart_does_not_send_again(tmp_path, receivers):
    smtp, http = receivers
    w = World(tmp_path, _channels(smtp, http))
    w.change("cam-1", "error_rate", "raised")
    w.after(31)
    assert len(http.delivered()) == 1
    again = Notifier(w.config, w.book, w.log, clock=w.clock)  # the service restarted
    w.clock.s += 60
    assert again.flush() == [] and len(http.posts) == 1
    w.clock.s += 3600
    assert len(again.flush()) == 1 and len(http.delivered()) == 2  # the repeat is still due


def test_channel_config_is_checked():
    with pytest.raises(ValueError, match="unique"):
        AlertingConfig(channels=[{"kind": "webhook", "name": "a", "url": "http://x/"},
                                 {"kind": "webhook", "name": "a", "url": "http://y/"}])
    with pytest.raises(ValueError, match="url"):
        AlertingConfig(channels=[{"kind": "webhook", "name": "a", "url": "ftp://x/"}])
    with pytest.raises(ValueError, match="to"):
        AlertingConfig(channels=[{"kind": "email", "name": "m", "smtp_host": "h", "sender": "a@b", "to": []}])
    with pytest.raises(ValueError, match="smtp_prot"):
        AlertingConfig(channels=[{"kind": "email", "name": "m", "smtp_host": "h", "sender": "a@b", "to": ["c@d"],
                                  "smtp_prot": 25}])
    from fleet.config import load_config
    with pytest.raises(ConfigError, match=r"alerting\.severity\.error_rate"):
        load_config(None, alerting={"severity": {"error_rate": "urgent"}})
    cfg = load_config(None, alerting={"severity": {"error_rate": "info"}})
    assert cfg.alerting.severity == {"error_rate": Severity.info}


def test_alertmanager_payload_of_a_resolved_group():
    from fleet.alerting import Notification, NotifiedAlert

    n = Notification(group_key='{}:{rule="latency:total"}', group_labels={"rule": "latency:total"}, alerts=[
        NotifiedAlert(id="x1", device="cam-1", rule="latency:total", family="latency", severity=Severity.warning,
                      status="resolved", starts_at="2026-11-02T08:00:00+00:00", ends_at="2026-11-02T09:00:00+00:00",
                      runbook="docs/runbooks.md#latency")])
    body = alertmanager(n, "r")
    assert body["status"] == "resolved" and body["alerts"][0]["endsAt"] == "2026-11-02T09:00:00+00:00"
    assert body["externalURL"] == "" and body["alerts"][0]["generatorURL"] == ""
