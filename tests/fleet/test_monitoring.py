"""The monitoring loop of a running fleet service (real Mosquitto): a recorded prediction stream, sent by a
device over MQTT, crosses the error-rate rule; the service raises the alert once (per device and fleet-wide),
stores it, publishes it on the fleet alerts topic, and clears it when the stream no longer crosses the rule.

Every other rule the same way (`test_every_rule_fires_and_clears`): records sent over MQTT make it fire at the
fleet, more records (or an adjudicator's verdicts) make it clear; and `queue_growing` from a real edge daemon whose
runner is slowed: its windowed metrics records reach the fleet through its agent and outbox, the rule fires while
the queue grows and clears once it drained."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest

from fleet.config import FleetConfig, load_config
from fleet.protocol import AlertRecord, Batch, MetricsRecord, PredictionRecord, ReviewRecord, Topics, encode
from fleet.service import FleetService
from runtime.errors import ConfigError
from tests.fleet.devicesim import client as devicesim_client
from tests.fleet.devicesim import publish_until_acked, wait_for


class Listener:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, AlertRecord]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-listener")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, AlertRecord.model_validate_json(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _stream(device: str, start: datetime, n: int, errors: int) -> list[PredictionRecord]:
    """n predictions one second apart, the first `errors` of them errors: error rate errors/n, by hand."""
    return [PredictionRecord(device=device, created_at=(start + timedelta(seconds=i)).isoformat(), source="http",
                             release="seal", revision=1, mode="production",
                             decision="error" if i < errors else "pass", top_label="Normal", top_score=0.9,
                             latency_ms={"total": 10.0}, error="decode failed" if i < errors else None)
            for i in range(n)]


def test_monitor_config_is_checked():
    assert FleetConfig().monitor_interval_s == 60.0
    with pytest.raises(ConfigError, match="monitor_window"):
        load_config(None, monitor_window="2h")
    with pytest.raises(ConfigError, match="alert_rules"):
        load_config(None, alert_rules={"error_rate": {"max_rate": 2}})


def test_running_service_raises_stores_publishes_and_clears(config, mosquitto):
    topics = Topics(config.prefix)
    assert topics.fleet("alerts") == "shadowline/fleet/alerts" and topics.parse(topics.fleet("alerts")) is None
    with pytest.raises(ValueError):
        topics.fleet("desired")
    listener = Listener(mosquitto.port, topics.fleet("alerts"))
    assert listener.ready.wait(10)
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "monitor_interval_s": 0.2})).start()
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-1")
    dev.connect("127.0.0.1", mosquitto.port)
    dev.loop_start()
    try:
        fleet = svc.fleet
        start = datetime.now(timezone.utc) - timedelta(minutes=30)
        first = _stream("cam-1", start, 30, errors=3)  # 3 / 30 = 10% > 1%, with 30 >= 20 samples
        dev.publish(topics.device("cam-1", "predictions"),
                    encode(Batch(device="cam-1", kind="predictions", records=[p.model_dump(mode="json") for p in first])),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: len(list(fleet.store.alerts())) >= 2, 30, "the error-rate alerts")
        raised = sorted(fleet.store.alerts(), key=lambda a: a.device)
        assert [(a.device, a.rule, a.state) for a in raised] == [("*", "error_rate", "raised"),
                                                                 ("cam-1", "error_rate", "raised")]
        assert raised[1].value == pytest.approx(0.1) and raised[1].threshold == 0.01
        # raised once: further passes over the same records change nothing
        passes = svc.config.monitor_interval_s * 6
        threading.Event().wait(passes)
        assert len(list(fleet.store.alerts())) == 2
        wait_for(lambda: len(listener.messages) >= 2, 10, "the published alerts")
        assert {(t, a.id) for t, a in listener.messages} == {("shadowline/fleet/alerts", a.id) for a in raised}

        # 300 more good predictions: 3 / 330 = 0.91% <= 1%, the condition no longer holds
        more = _stream("cam-1", start + timedelta(seconds=60), 300, errors=0)
        dev.publish(topics.device("cam-1", "predictions"),
                    encode(Batch(device="cam-1", kind="predictions", records=[p.model_dump(mode="json") for p in more])),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: len(list(fleet.store.alerts())) >= 4, 30, "the alerts to clear")
        cleared = [a for a in fleet.store.alerts() if a.state == "cleared"]
        assert sorted(a.device for a in cleared) == ["*", "cam-1"]
        assert all(a.value == pytest.approx(3 / 330) for a in cleared)
        wait_for(lambda: len(listener.messages) >= 4, 10, "the published clearances")
        threading.Event().wait(passes)
        assert len(list(fleet.store.alerts())) == 4 and len(listener.messages) == 4
    finally:
        dev.loop_stop()
        listener.stop()
        svc.stop()


# -- every rule fires and clears from a real data stream ---------------------------------------------------------
NOW = datetime.now(timezone.utc)


def _at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def _preds(n: int, minutes_ago: float, label: str = "Normal", score: float = 0.9, decision: str = "pass",
           latency: float = 10.0) -> list[PredictionRecord]:
    """n predictions of cam-1 spread over the minute before `minutes_ago`."""
    return [PredictionRecord(device="cam-1", created_at=_at(minutes_ago + 1 - i / n), source="http", release="seal",
                             revision=1, mode="shadow", decision=decision, top_label=label, top_score=score,
                             flagged=[(label, score)] if decision == "flag" else [], latency_ms={"total": latency})
            for i in range(n)]


def _reviews(preds: list[PredictionRecord], verdicts: list[str], minutes_ago: float,
             who: str = "ann") -> list[ReviewRecord]:
    return [ReviewRecord(prediction_id=p.id, device=p.device, created_at=_at(minutes_ago), inspector=who, verdict=v,
                         defect_class="Defective" if v == "missed_defect" else None,
                         override=v in ("false_positive", "missed_defect"), model_decision=p.decision,
                         release=p.release, revision=p.revision, top_label=p.top_label, top_score=p.top_score)
            for p, v in zip(preds, verdicts)]


def _queue(depths: list[float], minutes_ago: float) -> list[MetricsRecord]:
    return [MetricsRecord(device="cam-1", created_at=_at(minutes_ago - i * 0.1), release="seal", revision=1,
                          window_s=6, values={"queue_depth": d}) for i, d in enumerate(depths)]


BASELINE_MIN = 2 * 24 * 60  # the release's first records, two days ago: its baseline (never the judged hour)


def _latency():
    base = _preds(20, BASELINE_MIN, latency=10.0)
    # P95 of 20 at 30 ms > 2 x 10 ms; then 400 more at 10 ms: P95 (rank 399 of 420) is 10 ms again
    return base + _preds(20, 30, latency=30.0), _preds(400, 20, latency=10.0)


def _class_share():
    base = _preds(30, BASELINE_MIN, "Defective", 0.9, "flag") + _preds(70, BASELINE_MIN)
    # 60% Defective against 30% (30 points); then 80 Normal: 60 of 140 = 42.9% (12.9 points)
    return base + _preds(36, 30, "Defective", 0.9, "flag") + _preds(24, 30), _preds(80, 20)


def _confidence_drop():
    # Normal at 0.9 in the baseline, 0.7 now: 22% lower; then 60 at 0.95: (14 + 57) / 80 = 0.8875, 1.4% lower
    return _preds(20, BASELINE_MIN, score=0.9) + _preds(20, 30, score=0.7), _preds(60, 20, score=0.95)


def _low_confidence():
    base = _preds(4, BASELINE_MIN, score=0.5) + _preds(96, BASELINE_MIN, score=0.95)
    # 20 of 60 below 0.6 (33%) against 4%: over max(2 x 4%, 4% + 5 points) = 9%; then 200 more: 20/260 = 7.7%
    return base + _preds(20, 30, score=0.5) + _preds(40, 30, score=0.95), _preds(200, 20, score=0.95)


def _queue_growing():
    return _queue([1, 3, 6, 10], 30), _queue([8, 5, 2, 0], 20)


OVERRIDE_FLAGS = _preds(10, 30, "Defective", 0.9, "flag")
OVERRIDE_PASSES = _preds(20, 30)


def _override_rate():
    # 6 of 30 reviewed cases overridden (20% > 15%); then QA, the adjudicator, overturns 3 of them: 3 of 30 (10%),
    # the same 30 cases
    fps = ["false_positive"] * 6 + ["confirm"] * 4
    fire = OVERRIDE_FLAGS + OVERRIDE_PASSES + _reviews(OVERRIDE_FLAGS, fps, 25) + _reviews(
        OVERRIDE_PASSES, ["confirm"] * 20, 25)
    return fire, _reviews(OVERRIDE_FLAGS[:3], ["confirm"] * 3, 15, "qa-lead")


def _override_rate_class():
    # Defective: 3 of 10 overridden (30% > 25%) while overall 3 of 40 is 7.5%; QA overturns one: 2 of 10 (20%)
    flags, passes = OVERRIDE_FLAGS, _preds(30, 30)
    fire = flags + passes + _reviews(flags, ["false_positive"] * 3 + ["confirm"] * 7, 25) + _reviews(
        passes, ["confirm"] * 30, 25)
    return fire, _reviews(flags[:1], ["confirm"], 15, "qa-lead")


SCENARIOS = {"latency:total": _latency, "class_share:Defective": _class_share, "confidence_drop:Normal":
             _confidence_drop, "low_confidence_spike": _low_confidence, "queue_growing": _queue_growing,
             "override_rate": _override_rate, "override_rate:Defective": _override_rate_class}


def _send(dev: mqtt.Client, topics: Topics, records: list) -> None:
    kinds = {PredictionRecord: "predictions", ReviewRecord: "reviews", MetricsRecord: "metrics"}
    for cls, kind in kinds.items():
        mine = [r.model_dump(mode="json") for r in records if isinstance(r, cls)]
        if mine:
            publish_until_acked(dev, topics.device("cam-1", kind), encode(Batch(device="cam-1", kind=kind,
                                                                                  records=mine)))


def test_every_rule_is_tested_end_to_end():
    """The rule families of AlertRules, each with a scenario here (error_rate: the test above)."""
    from fleet.analytics.alerts import AlertRules

    families = {"latency" if r.startswith("latency") else r.split(":")[0] for r in SCENARIOS} | {"error_rate"}
    assert families == set(AlertRules.model_fields)


@pytest.mark.parametrize("rule", list(SCENARIOS))
def test_every_rule_fires_and_clears(rule, config, mosquitto):
    fire, clear = SCENARIOS[rule]()
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "monitor_interval_s": 0.2,
                                                 "adjudicators": ["qa-lead"]})).start()
    dev = devicesim_client(mosquitto.url, "cam-1")
    store = svc.fleet.store

    def states(device: str) -> list[str]:
        return [a.state for a in store.alerts() if a.rule == rule and a.device == device]

    try:
        _send(dev, svc.fleet.topics, fire)
        wait_for(lambda: states("cam-1") == ["raised"] and states("*") == ["raised"], 30, f"{rule} raised")
        raised = next(a for a in store.alerts() if a.rule == rule and a.device == "cam-1")
        assert raised.value is not None and raised.threshold is not None and raised.message
        _send(dev, svc.fleet.topics, clear)
        wait_for(lambda: states("cam-1") == ["raised", "cleared"] and states("*") == ["raised", "cleared"], 30,
                 f"{rule} cleared")
    finally:
        dev.loop_stop()
        dev.disconnect()
        svc.stop()


@pytest.mark.slow
def test_queue_growing_from_a_real_daemon_with_a_slowed_runner(config, mosquitto, tmp_path, bundles, keys):
    """A real edge daemon (its frame path, metrics reporter, outbox and fleet agent) on the real PCB bundle, its
    runner slowed to ~12 frames/s while frames arrive at ~33/s: its windowed metrics records reach the fleet over
    MQTT, the fleet raises queue_growing while the queue grows and clears it once the queue drained."""
    import time

    from edge.sources import Frame
    from tests.edge.conftest import PCB, pcb_release
    from tests.edge.test_daemon_inprocess import make_daemon

    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "monitor_interval_s": 0.2})).start()
    d = make_daemon(tmp_path, keys, pcb_release(bundles), queue={"max_size": 500},
                    metrics={"window_s": 0.4, "sample_s": 0.1}, pipeline={"max_batch": 1},
                    fleet={"broker_url": mosquitto.url, "releases_dir": str(tmp_path / "releases"),
                           "trust_store": str(keys["trust"]), "publish_interval_s": 0.05, "smoke_images": 0})
    d.start()
    store = svc.fleet.store

    def states() -> list[str]:
        return [a.state for a in store.alerts() if a.rule == "queue_growing" and a.device == "dev-1"]

    try:
        runner = d.frames.slot.current.active.stages[0][1].runner
        real_infer = runner._infer

        def slowed(feeds):  # the runner is slowed (a busy GPU, a thermal throttle): 80 ms a frame
            time.sleep(0.08)
            return real_infer(feeds)

        runner._infer = slowed
        data = (PCB / "Normal_33.png").read_bytes()
        done: list[str] = []
        for i in range(90):
            d.queue.put_nowait(Frame(f"http:{i}", data=data, suffix=".png", on_done=lambda out: done.append("x")))
            time.sleep(0.03)  # the line's pace, not a wait for a result
        wait_for(lambda: "raised" in states(), 60, "queue_growing raised at the fleet")
        wait_for(lambda: len(done) == 90, 60, "the daemon to work off its queue")
        wait_for(lambda: states() == ["raised", "cleared"], 60, "queue_growing cleared once the queue drained")

        def depths() -> list[float]:
            return [m.values["queue_depth"] for m in store.metrics(device="dev-1")]

        # the rule clears as soon as the queue stops growing; the window that saw it empty may still be on its way
        wait_for(lambda: depths()[-1] == 0, 30, "a metrics window reporting the drained queue")
        assert max(depths()) >= 10, depths()
        raised = next(a for a in store.alerts() if a.rule == "queue_growing" and a.state == "raised")
        assert raised.value is not None and raised.value > 0  # the growth over the last readings
        wait_for(lambda: store.count("predictions") == 90, 30, "every prediction at the fleet")
    finally:
        d.stop()
        svc.stop()
