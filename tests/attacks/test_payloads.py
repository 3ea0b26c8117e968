"""Bad records through the real broker and the real ingest (both brokers): each is refused, never stored, counted
per device and reason where an admin sees it (`GET /api/ingest`), and whatever was refused, every page and
`/metrics` still answers. The good records of the same batch are stored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient

from fleet.api import create_app
from tests.attacks.conftest import Rig
from tests.attacks.mqtt_helpers import Peer, wait_until
from tests.attacks.pages import render_everything
from tests.fleet.conftest import auth
from tests.fleet.devicesim import batch, predictions


def _iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat(timespec="milliseconds")


def _raw_batch(device: str, kind: str, records: list[dict[str, Any]]) -> bytes:
    """A batch as an attacker writes it: json.dumps emits NaN and Infinity as bare tokens."""
    return json.dumps({"schema": "shadowline.batch", "version": 1, "device": device, "kind": kind,
                       "sent_at": _iso(timedelta()), "records": records}).encode()


# numbers that parse to infinity, sent as bare JSON tokens (json.dumps would write inf as Infinity)
RAW_NUMBERS = ("1e999", "1" * 250 + "e99")


def _cases(device: str) -> list[tuple[str, str, str, Any]]:
    """(name, reason, field path, value) of one bad prediction each."""
    return [
        ("NaN latency", "not_finite", "latency_ms.total", float("nan")),
        ("Infinity latency", "not_finite", "latency_ms.total", float("inf")),
        ("-Infinity top score", "not_finite", "top_score", float("-inf")),
        ("1e999 latency", "not_finite", "latency_ms.total", "1e999"),
        # 250 digits and a 2-digit exponent: infinity without the 3-digit exponent a text scan looks for
        ("250-digit latency", "not_finite", "latency_ms.total", "1" * 250 + "e99"),
        ("negative latency", "negative_latency", "latency_ms.total", -5.0),
        ("hour-long latency", "latency_too_large", "latency_ms.total", 7.2e6),
        ("created_at not a date", "bad_timestamp", "created_at", "not-a-date"),
        ("created_at in year 9999", "timestamp_in_future", "created_at", "9999-01-01T00:00:00+00:00"),
        ("created_at an hour ahead", "timestamp_in_future", "created_at", _iso(timedelta(hours=1))),
        ("created_at a year ago", "timestamp_too_old", "created_at", _iso(-timedelta(days=365))),
        ("created_at without offset", "bad_timestamp", "created_at", "2026-11-28T10:00:00"),
        ("id with a slash", "bad_id", "id", "../../x"),
        ("id of 500 characters", "bad_id", "id", "a" * 500),
        ("source of 1 MB", "too_large", "source", "x" * (1 << 20)),
        ("10,000 scores", "too_large", "thresholds", {f"c{i}": 0.5 for i in range(10_000)}),
        ("negative revision", "bad_revision", "revision", -1),
        ("release with a newline", "bad_id", "release", "seal\n<script>"),
        ("record of another device", "device_mismatch", "device", "cam-b"),
    ]


def _set(rec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    rec = json.loads(json.dumps(rec))
    if path == "latency_ms.total":
        rec["latency_ms"] = {"total": value}
    else:
        rec[path] = value
    return rec


def test_bad_records_are_refused_counted_and_pages_still_answer(rig: Rig, attack, tokens):
    t, fleet, dev = rig.topics, rig.fleet, "cam-a"
    a = Peer(rig.url, dev, dev, rig.password(dev))
    assert a.connected()
    try:
        for i, (name, reason, path, value) in enumerate(_cases(dev)):
            with attack(f"{rig.kind}: record with {name}"):
                good, bad = predictions(dev, 2, seed=1000 + i)
                bad = _set(bad, path, value)
                payload = _raw_batch(dev, "predictions", [good, bad])
                if value in RAW_NUMBERS:  # a number token json.dumps cannot write
                    payload = payload.replace(f'"{value}"'.encode(), value.encode())
                before = {(r["device"], r["reason"]): r["count"] for r in fleet.store.refused()}
                assert a.publish(t.device(dev, "predictions"), payload)
                assert wait_until(lambda g=good: fleet.store.predictions_by_id(dev, [g["id"]]), 10), "good one lost"
                after = {(r["device"], r["reason"]): r["count"] for r in fleet.store.refused()}
                assert after.get((dev, reason), 0) == before.get((dev, reason), 0) + 1, (name, after)
                stored = fleet.store.rows("SELECT count(*) AS n FROM predictions WHERE id = ?", (bad["id"],))[0]["n"]
                assert stored == 0, f"{name} was stored"
        with attack(f"{rig.kind}: a batch of 10,001 records"):
            many = predictions(dev, 10_001, seed=9)
            before = fleet.ingest.stats.refused
            assert a.publish(t.device(dev, "predictions"), batch(dev, "predictions", many), wait=30)
            assert wait_until(lambda: fleet.ingest.stats.refused >= before + 10_001, 30)
            assert not fleet.store.predictions_by_id(dev, [many[0]["id"]])
        with TestClient(create_app(fleet)) as client:
            with attack(f"{rig.kind}: pages and /metrics after the bad records"):
                got = client.get("/api/ingest", headers=auth(tokens["viewer"]))
                assert got.status_code == 200
                reasons = {(r["device"], r["reason"]) for r in got.json()["refused"]}
                assert {(dev, c[1]) for c in _cases(dev)} <= reasons
                statuses = render_everything(client, tokens["admin"], ("/dashboard/shadow?release=seal@1",))
                assert "/dashboard/pillars" in statuses and "/metrics" in statuses
                assert all(s < 500 for s in statuses.values()), statuses
    finally:
        a.close()


def test_forged_verdicts_over_mqtt(rig: Rig, attack):
    """A device's verdicts name its own stored predictions; the fleet computes the override from the prediction."""
    t, fleet, dev = rig.topics, rig.fleet, "cam-a"
    a = Peer(rig.url, dev, dev, rig.password(dev))
    assert a.connected()
    try:
        preds = predictions(dev, 4, seed=3)
        for p, decision in zip(preds, ("pass", "flag", "pass", "flag")):
            p["decision"], p["flagged"] = decision, [["defect", 0.9]] if decision == "flag" else []
        assert a.publish(t.device(dev, "predictions"), batch(dev, "predictions", preds))
        assert wait_until(lambda: len(fleet.store.predictions_by_id(dev, [p["id"] for p in preds])) == 4, 10)

        def review(pid: str, verdict: str, override: bool, **kw: Any) -> dict[str, Any]:
            return {"id": f"rv-{pid}-{verdict}", "prediction_id": pid, "device": kw.pop("device", dev),
                    "created_at": _iso(timedelta()), "inspector": "ann", "verdict": verdict, "override": override,
                    "model_decision": kw.pop("model_decision", "flag"), "release": "seal", "revision": 1, **kw}

        theirs = predictions("cam-b", 1, seed=4)
        b = Peer(rig.url, "cam-b", "cam-b", rig.password("cam-b"))
        assert b.connected() and b.publish(t.device("cam-b", "predictions"), batch("cam-b", "predictions", theirs))
        b.close()
        assert wait_until(lambda: fleet.store.predictions_by_id("cam-b", [theirs[0]["id"]]), 10)
        cases = [("verdict on a prediction that does not exist", review("no-such-prediction", "confirm", False),
                  "unknown_prediction"),
                 ("verdict on another device's prediction", review(theirs[0]["id"], "confirm", False),
                  "unknown_prediction"),
                 ("false positive on a frame the model passed", review(preds[0]["id"], "false_positive", True),
                  "verdict_mismatch")]
        for name, rec, reason in cases:
            with attack(f"{rig.kind}: {name}"):
                before = {r["reason"]: r["count"] for r in fleet.store.refused() if r["device"] == dev}
                assert a.publish(t.device(dev, "reviews"), batch(dev, "reviews", [rec]))
                want = before.get(reason, 0) + 1
                assert wait_until(lambda why=reason, n=want: {r["reason"]: r["count"] for r in fleet.store.refused()
                                                              if r["device"] == dev}.get(why, 0) == n, 10)
                assert not fleet.store.rows("SELECT id FROM reviews WHERE id = ?", (rec["id"],))
        with attack(f"{rig.kind}: a confirm flagged as an override"):
            rec = review(preds[1]["id"], "confirm", True, model_decision="pass")
            assert a.publish(t.device(dev, "reviews"), batch(dev, "reviews", [rec]))
            assert wait_until(lambda: list(fleet.store.reviews(device=dev)), 10)
            (stored,) = [r for r in fleet.store.reviews(device=dev) if r.id == rec["id"]]
            assert stored.override is False and stored.model_decision == "flag"  # the prediction's truth
        with attack(f"{rig.kind}: an override claimed as a confirm"):
            rec = review(preds[2]["id"], "missed_defect", False, defect_class="defect", model_decision="flag")
            assert a.publish(t.device(dev, "reviews"), batch(dev, "reviews", [rec]))
            assert wait_until(lambda: [r for r in fleet.store.reviews(device=dev) if r.id == rec["id"]], 10)
            (stored,) = [r for r in fleet.store.reviews(device=dev) if r.id == rec["id"]]
            assert stored.override is True and stored.model_decision == "pass"
    finally:
        a.close()
