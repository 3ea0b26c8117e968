"""The decisions over the documented API (a real Fleet on a SQLite store, through the ASGI app): the pillars, the
shadow report, sign-off and promotion through the gate with the audited override, alerts (ack, resolve, silence),
one device's details; 413 for oversized bodies; refusals that name what the admin sent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.config import FleetConfig
from fleet.service import Fleet
from tests.dashboard.world import bundle_tar
from tests.fleet.conftest import auth
from tests.fleet.figures_data import EXPECTED, GROUP, QA, REF, seeded_fleet


@pytest.fixture
def decided(config: FleetConfig, bundles) -> Iterator[tuple[Fleet, TestClient]]:
    f = seeded_fleet(config, bundles["pcb-aoi"])
    with TestClient(create_app(f)) as c:
        yield f, c
    f.close()


def test_pillars_show_the_figures(decided, tokens):
    _, c = decided
    r = c.get("/api/pillars", params={"window": "1h"}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    s = r.json()["snapshot"]
    assert s["health"]["predictions"] == EXPECTED["predictions"] and s["health"]["error_rate"] == EXPECTED["error_rate"]
    assert s["health"]["latency_ms"]["total"]["p95"] == EXPECTED["latency_p95_ms"]
    assert s["distribution"]["share"] == pytest.approx(EXPECTED["class_share"])
    o = s["overrides"]["overall"]
    assert (o["reviews"], o["overrides"], o["rate"]) == (EXPECTED["reviewed"], EXPECTED["overrides"], 0.2)
    assert s["impact"]["missed_defects"] == EXPECTED["missed_defects"] and r.json()["trend"] is None
    with_trend = c.get("/api/pillars", params={"device": "cam-1", "trend": "true"}, headers=auth(tokens["viewer"]))
    days = with_trend.json()["trend"]  # the 30 days ending now touch 31 calendar days unless now is midnight
    assert 30 <= len(days) <= 31 and sum(d["predictions"] for d in days) == 20
    assert c.get("/api/pillars", params={"window": "2h"}, headers=auth(tokens["viewer"])).status_code == 422
    assert c.get("/api/pillars", headers=auth(tokens["device"])).status_code == 403


def test_report_signoff_and_promotion_through_the_gate(decided, tokens):
    fleet, c = decided
    q = {"release": REF, "group": GROUP, "days": 1}
    rep = c.get("/api/shadow/report", params=q, headers=auth(tokens["viewer"])).json()
    for k in ("reviewed", "disputed", "adjudicated", "unresolved", "defects", "missed_defects", "model_only_catches",
              "model_false_positives", "bad_images"):
        assert rep[k] == EXPECTED[k], k
    assert rep["fp_rate"] == pytest.approx(EXPECTED["fp_rate"]) and rep["adjudicators"] == [QA]
    assert rep["model_recall"] == pytest.approx(EXPECTED["model_recall"])
    assert rep["override_rate"] == {"reviews": 35, "overrides": 7, "rate": 0.2}
    failed = [ch["name"] for ch in rep["checks"] if not ch["passed"]]
    assert failed == ["days", "recall", "fp_rate", "unresolved", "sign_off"] and rep["go"] is False
    md = c.get("/api/shadow/report", params={**q, "format": "md"}, headers=auth(tokens["viewer"]))
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith(f"# Shadow report: {REF} — NO-GO") and "| unresolved disputes | 2 |" in md.text

    body = {"release": REF, "group": GROUP, "note": "two weeks watched"}
    assert c.post("/api/shadow/signoff", json=body, headers=auth(tokens["viewer"])).status_code == 403
    signed = c.post("/api/shadow/signoff", json=body, headers=auth(tokens["admin"]))
    assert signed.status_code == 200 and signed.json()["by"] == "admin-user"
    assert c.post("/api/shadow/signoff", json={**body, "release": "nope@1"},
                  headers=auth(tokens["admin"])).status_code == 404
    rep = c.get("/api/shadow/report", params=q, headers=auth(tokens["viewer"])).json()
    assert [ch["name"] for ch in rep["checks"] if not ch["passed"]] == ["days", "recall", "fp_rate", "unresolved"]

    refused = c.post("/api/shadow/promote", json={"release": REF, "group": GROUP, "days": 1},
                     headers=auth(tokens["admin"]))
    assert refused.status_code == 409
    assert refused.json()["error"] == (f"promotion of {REF} on {GROUP} refused: exit criteria not met: days, recall, "
                                       "fp_rate, unresolved")
    assert len(fleet.releases.list()) == 1
    done = c.post("/api/shadow/promote", json={"release": REF, "group": GROUP, "days": 1,
                                               "override_reason": "QA accepts the risk for the pilot line"},
                  headers=auth(tokens["admin"]))
    assert done.status_code == 200, done.text
    d = done.json()
    assert d["release"] == "seal@2" and d["decision"]["overridden"] and d["group"] == GROUP
    assert fleet.releases.get("seal@2").mode == "production"
    assert fleet.rollouts.status(d["rollout"])["release"] == "seal@2"
    audit = c.get("/api/shadow/audit", params={"release": "seal"}, headers=auth(tokens["viewer"])).json()
    assert [(a["outcome"], a["actor"]) for a in audit] == [("refused", "admin-user"), ("overridden", "admin-user")]
    assert audit[1]["reason"] == "QA accepts the risk for the pilot line" and audit[1]["report"]["unresolved"] == 2
    assert audit[1]["failed_checks"] == ["days", "recall", "fp_rate", "unresolved"]


def test_alerts_acknowledge_resolve_and_silence(decided, tokens):
    fleet, c = decided
    raised = fleet.monitor.run_once()
    assert {(a.device, a.rule) for a in raised} >= {("*", "error_rate"), ("*", "override_rate")}
    v, a = auth(tokens["viewer"]), auth(tokens["admin"])
    open_ = c.get("/api/alerts", headers=v).json()
    fleet_wide = {x["rule"]: x for x in open_ if x["device"] == "*"}
    assert fleet_wide["override_rate"]["value"] == EXPECTED["override_rate"]
    assert fleet_wide["error_rate"]["value"] == EXPECTED["error_rate"]
    aid = fleet_wide["override_rate"]["id"]
    assert c.post(f"/api/alerts/{aid}/ack", json={"note": "looking"}, headers=v).status_code == 403
    acked = c.post(f"/api/alerts/{aid}/ack", json={"note": "looking"}, headers=a).json()
    assert acked["status"] == "acknowledged" and acked["ack"]["by"] == "admin-user"
    again = c.post(f"/api/alerts/{aid}/ack", headers=a)
    assert again.status_code == 409 and "acknowledged by admin-user" in again.json()["error"]
    assert c.post("/api/alerts/nope/ack", headers=a).status_code == 404

    bad = c.post("/api/silences", json={"rule": "error_rate", "reason": "x", "duration": "soon"}, headers=a)
    assert bad.status_code == 422 and "duration: duration 'soon'" in bad.json()["error"]
    s = c.post("/api/silences", json={"rule": "error_rate", "reason": "decoder fix rolling out", "duration": "2h"},
               headers=a).json()
    assert s["by"] == "admin-user" and s["rule"] == "error_rate"
    err = c.get(f"/api/alerts/{fleet_wide['error_rate']['id']}", headers=v).json()
    assert err["status"] == "silenced" and err["silence"]["id"] == s["id"]
    assert [x["id"] for x in c.get("/api/silences", headers=v).json()] == [s["id"]]
    assert c.post(f"/api/silences/{s['id']}/expire", headers=a).status_code == 200
    assert c.get("/api/silences", headers=v).json() == []
    assert c.post(f"/api/silences/{s['id']}/expire", headers=a).status_code == 409

    done = c.post(f"/api/alerts/{aid}/resolve", json={"note": "fixture replaced"}, headers=a).json()
    assert done["status"] == "resolved" and done["resolved_by"]["by"] == "admin-user"
    history = c.get("/api/alerts", params={"history": "true"}, headers=v).json()
    assert aid in {x["id"] for x in history} and aid not in {x["id"] for x in c.get("/api/alerts", headers=v).json()}


def test_device_details(decided, tokens):
    fleet, c = decided
    fleet.monitor.run_once()
    d = c.get("/api/devices/cam-1", headers=auth(tokens["viewer"])).json()
    assert d["id"] == "cam-1" and d["groups"] == [GROUP] and d["desired"]["release"] is None
    assert d["health_24h"]["predictions"] == 20 and d["health_24h"]["error_rate"] == pytest.approx(1 / 20)
    assert [e["source"] for e in d["recent_errors"]] == ["folder:E0.png"]  # E0 is prediction 38: cam-1
    assert {a["rule"] for a in d["alerts"]} >= {"error_rate"} and all(a["device"] == "cam-1" for a in d["alerts"])
    missing = c.get("/api/devices/cam-9", headers=auth(tokens["viewer"]))
    assert missing.status_code == 404 and "cam-9" in missing.json()["error"]


def test_oversized_bodies_get_413(config, published, tokens, bundles):
    f = Fleet(config.model_copy(update={"max_upload_mb": 0.01, "max_body_kb": 1}), publish=published)
    try:
        with TestClient(create_app(f)) as c:
            a = {**auth(tokens["admin"]), "X-Bundle-Name": "pcb-aoi-v1.0.tar"}
            r = c.post("/api/bundles", content=bundle_tar(bundles["pcb-aoi"]), headers=a)
            assert r.status_code == 413
            assert r.json()["error"] == "pcb-aoi-v1.0.tar: bundle upload is over the limit of 0.01 MB (max_upload_mb)"

            def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
                for _ in range(20):
                    yield b"\0" * 1024
            r = c.post("/api/bundles", content=chunks(), headers=a)
            assert r.status_code == 413 and r.json()["error"].startswith("pcb-aoi-v1.0.tar: bundle upload is over")
            big = {"name": "x" * 2000, "stages": [{"role": "verify", "bundle": "b-v1.0"}]}
            r = c.post("/api/releases", json=big, headers=auth(tokens["admin"]))
            assert r.status_code == 413 and "/api/releases" in r.json()["error"]
            assert f.registry.list() == [] and f.releases.list() == []
    finally:
        f.close()


def test_refusals_name_what_the_admin_sent(client, tokens, bundles, tmp_path):
    bad = tmp_path / bundles["pcb-aoi"].name
    shutil.copytree(bundles["pcb-aoi"], bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    r = client.post("/api/bundles", content=bundle_tar(bad),
                    headers={**auth(tokens["admin"]), "X-Bundle-Name": "/home/me/pcb-aoi-v1.0.tar"})
    assert r.status_code == 422 and r.json()["error"].startswith("pcb-aoi-v1.0.tar: file 'model.onnx'")
    assert ".upload-" not in r.text
    anon = client.post("/api/bundles", content=b"junk", headers=auth(tokens["admin"]))
    assert anon.json()["error"].startswith("the uploaded bundle: not a bundle") and ".upload-" not in anon.text
    r = client.post("/api/releases", json={"name": "x", "stages": [{"role": "nope"}]}, headers=auth(tokens["admin"]))
    assert r.status_code == 422
    assert r.json()["problems"] == ["stages.0.role: Input should be 'screen' or 'verify'",
                                    "stages.0.bundle: Field required"]
