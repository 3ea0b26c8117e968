"""The daemon as a real process on the shipped images: decisions, modes, actions, candidate, bad input, API."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Mosquitto
from tests.edge.conftest import (
    PCB,
    PHOTOS,
    VERIFY_T,
    MqttListener,
    WebhookServer,
    expected_photo_decisions,
    fill_inbox,
    pcb_release,
    photo_release,
    write_config,
)

CAND_VERIFY = {**VERIFY_T, "dog": 0.6}


def wait_moved(inbox: Path, names: list[str], timeout: float = 30) -> None:
    """The folder's mover moves each file after its commit, on its own thread: a frame counted is not yet moved."""
    deadline = time.monotonic() + timeout
    while any((inbox / n).exists() for n in names) and time.monotonic() < deadline:
        time.sleep(0.05)


def active_records(db: Path) -> dict[str, list[dict]]:
    """File name -> its active prediction records (read straight from the daemon's SQLite file)."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT source, record FROM predictions WHERE role = 'active'").fetchall()
    out: dict[str, list[dict]] = {}
    for source, rec in rows:
        out.setdefault(source.removeprefix("folder:"), []).append(json.loads(rec))
    return out


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics parsed with prometheus_client's own parser: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def actions_config(hook: WebhookServer, broker: Mosquitto) -> dict:
    return {"webhook": {"url": hook.url, "timeout_s": 2},
            "mqtt": {"broker_url": broker.url, "topic": "plant/work-orders"},
            "retry": {"backoff_s": 0.1, "max_backoff_s": 0.5}}


def test_shadow_mode_records_everything_and_sends_nothing(tmp_path: Path, bundles, keys, daemons, mosquitto) -> None:
    release = photo_release(bundles, actions=["webhook", "work_order_mqtt"])
    release["candidate"] = photo_release(bundles, revision=2, verify=CAND_VERIFY)
    listener = MqttListener(mosquitto.port, "plant/work-orders")
    with WebhookServer() as hook:
        cfg = write_config(tmp_path, keys, release, actions=actions_config(hook, mosquitto))
        names = fill_inbox(tmp_path / "inbox", PHOTOS)
        d = daemons(cfg)
        st = d.wait_frames(len(names))
        # nothing was sent and nothing can be: the dispatcher only sends deliveries committed with a record, and
        # none was (checked below, in the database)
        assert hook.hits == 0 and listener.messages == []
    listener.close()

    expected = expected_photo_decisions(bundles, VERIFY_T)
    cand_expected = expected_photo_decisions(bundles, CAND_VERIFY)
    recs = active_records(tmp_path / "shadowline.db")
    assert sorted(recs) == sorted(names)
    for name, (decision, classes) in expected.items():
        (r,) = recs[name]
        assert r["decision"] == decision and sorted(c for c, _ in r["flagged"]) == classes, name
        assert r["mode"] == "shadow" and r["release"] == "photos" and r["revision"] == 1
        assert r["models"] == {"screen": "squeezenet-v1.0", "verify": "yolox-nano-v1.0"}
        assert set(r["latency_ms"]) >= {"decode", "screen", "total"}
    assert st["decisions"]["flag"] == sum(d == "flag" for d, _ in expected.values()) > 0
    # candidate: one shadow record per frame; disagreements point at the active record
    with sqlite3.connect(tmp_path / "shadowline.db") as c:
        cands = [json.loads(x) for (x,) in c.execute("SELECT record FROM predictions WHERE role='candidate'")]
        deliveries = c.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        outbox = c.execute("SELECT COUNT(*) FROM outbox WHERE kind='predictions'").fetchone()[0]
    assert deliveries == 0
    assert outbox == 2 * len(names)  # every record reached the outbox in its own commit
    by_id = {r["id"]: n for n, rs in recs.items() for r in rs}
    disagreeing = {by_id[c["disagrees_with"]] for c in cands if c["disagrees_with"]}
    assert len(cands) == len(names)
    assert disagreeing == {n for n in names if expected[n] != cand_expected[n]} != set()
    assert all(c["mode"] == "shadow" and c["role"] == "candidate" and c["revision"] == 2 for c in cands)
    wait_moved(tmp_path / "inbox", names)
    assert sorted(p.name for p in (tmp_path / "inbox" / "done").iterdir()) == sorted(names)
    # retention kept every flagged frame and every disagreement
    kept = {r["id"] for rs in recs.values() for r in rs if r["image_kept"]}
    must = {r["id"] for rs in recs.values() for r in rs if r["decision"] == "flag"}
    must |= {c["disagrees_with"] for c in cands if c["disagrees_with"]}
    assert must <= kept
    samples = scrape(d.url)
    assert samples[("shadowline_frames_total", (("source", "folder"),))] == len(names)
    verified = sum(1 for rs in recs.values() for r in rs if len(r["stages"]) == 2)
    assert samples[("shadowline_stage_latency_seconds_count", (("stage", "verify"),))] == verified > 0
    assert samples[("shadowline_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "verify")))] == verified
    assert samples[("shadowline_queue_depth", ())] == 0
    cats = sum(1 for rs in recs.values() for r in rs if "cat" in [c for c, _ in r["flagged"]])
    assert samples[("shadowline_flags_total", (("class", "cat"),))] == cats > 0


def test_production_sends_exactly_one_action_per_flag(tmp_path: Path, bundles, keys, daemons, mosquitto) -> None:
    listener = MqttListener(mosquitto.port, "plant/work-orders")
    with WebhookServer(fail_first=2) as hook:  # the first two webhook calls fail: retried with backoff
        cfg = write_config(tmp_path, keys, photo_release(bundles, mode="production",
                                                        actions=["webhook", "work_order_mqtt"]),
                           actions=actions_config(hook, mosquitto))
        names = fill_inbox(tmp_path / "inbox", PHOTOS)
        d = daemons(cfg)
        d.wait_frames(len(names))
        flagged = {r["id"] for rs in active_records(tmp_path / "shadowline.db").values() for r in rs
                   if r["decision"] == "flag"}
        expected = expected_photo_decisions(bundles, VERIFY_T)
        assert len(flagged) == sum(dec == "flag" for dec, _ in expected.values()) > 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(hook.bodies) < len(flagged)
                                               or len(listener.messages) < len(flagged) or _undelivered(tmp_path)):
            time.sleep(0.1)
        # every delivery is settled (delivered): the dispatcher has nothing left that could send a repeat
        assert _undelivered(tmp_path) == 0
        assert sorted(b["id"] for b in hook.bodies) == sorted(flagged)
        assert sorted(m["id"] for m in listener.messages) == sorted(flagged)
        assert all(m["schema"] == "shadowline.work_order" and m["flagged"] for m in listener.messages)
    listener.close()
    with sqlite3.connect(tmp_path / "shadowline.db") as c:
        states = c.execute("SELECT channel, state, COUNT(*) FROM deliveries GROUP BY channel, state").fetchall()
        failed_attempts = c.execute("SELECT COUNT(*) FROM delivery_attempts WHERE ok = 0").fetchone()[0]
        ok_attempts = c.execute("SELECT COUNT(*) FROM delivery_attempts WHERE ok = 1").fetchone()[0]
        events = [json.loads(p) for (p,) in c.execute("SELECT payload FROM outbox WHERE kind='events'")]
    assert sorted(states) == [("webhook", "delivered", len(flagged)), ("work_order_mqtt", "delivered", len(flagged))]
    assert failed_attempts == 2 and ok_attempts == 2 * len(flagged)
    delivered = [e for e in events if e["kind"] == "action_delivered"]
    assert sorted((e["detail"]["prediction_id"], e["detail"]["channel"]) for e in delivered) == sorted(
        (pid, ch) for pid in flagged for ch in ("webhook", "work_order_mqtt"))


def _undelivered(workdir: Path) -> int:
    with sqlite3.connect(workdir / "shadowline.db", timeout=10) as c:
        return c.execute("SELECT COUNT(*) FROM deliveries WHERE state != 'delivered'").fetchone()[0]


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_bad_input_is_recorded_and_the_daemon_keeps_running(tmp_path: Path, bundles, keys, daemons) -> None:
    src = (PCB / "Defective_02.png").read_bytes()
    rgb = np.asarray(Image.open(PCB / "Defective_02.png").convert("RGB"))
    corrupt = bytearray(src)
    i = corrupt.find(b"IDAT")
    corrupt[i + 104: i + 404] = bytes(300)
    bad = {"truncated.png": src[: len(src) // 2], "corrupt.png": bytes(corrupt), "empty.jpg": b"",
           "notes.png": b"this is not an image\n", "bomb.png": _png(np.zeros((9000, 9000), np.uint8))}
    fine = {"gray.png": _png(np.asarray(Image.fromarray(rgb).convert("L"))),
            "rgba.png": _png(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])),
            "sixteen.png": None}
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(buf, "PNG")
    fine["sixteen.png"] = buf.getvalue()
    assert Image.open(io.BytesIO(fine["sixteen.png"])).mode.startswith("I")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, data in {**bad, **fine}.items():
        (inbox / name).write_bytes(data)
    fill_inbox(inbox, PCB)
    cfg = write_config(tmp_path, keys, pcb_release(bundles), limits={"max_pixels": 40_000_000})
    d = daemons(cfg)
    st = d.wait_frames(len(bad) + len(fine) + 4)
    assert st["errors"] == len(bad) and st["decisions"]["error"] == len(bad)
    wait_moved(inbox, [*bad, *fine])
    recs = active_records(tmp_path / "shadowline.db")
    reasons = {"truncated.png": "truncated", "corrupt.png": "corrupt", "empty.jpg": "empty file",
               "notes.png": "not a recognised image", "bomb.png": "over the limit of 40000000"}
    for name, why in reasons.items():
        (r,) = recs[name]
        assert r["decision"] == "error" and why in r["error"], (name, r["error"])
        assert (inbox / "failed" / name).exists()
        assert why in (inbox / "failed" / f"{name}.reason.txt").read_text()
    from runtime.bundle import load_bundle
    from runtime.predictor import BundleModel
    from runtime.processing.image import decode_image

    with load_bundle(bundles["pcb-aoi"]) as b:
        model = BundleModel(b).load()
        for name, data in fine.items():  # converted, then decided like any other frame
            score = model.predict([decode_image(data)])[0].scores["Defective"]
            (r,) = recs[name]
            assert r["decision"] == ("flag" if score >= 0.5 else "pass") and r["error"] is None, name
            assert r["stages"][0]["scores"]["Defective"] == round(score, 6)
            assert (inbox / "done" / name).exists()
        model.close()
    # still running: HTTP inference works, and a bad upload is a recorded 422
    r = httpx.post(d.url + "/v1/infer", content=(PCB / "Normal_33.png").read_bytes(),
                   headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200 and r.json()["record"]["decision"] == "pass"
    assert r.json()["record"]["source"] == "http"
    r = httpx.post(d.url + "/v1/infer", content=b"\x89PNG\r\n\x1a\n broken", timeout=30)
    assert r.status_code == 422 and "http: not a recognised image format" in r.json()["error"]
    assert d.get("/v1/predictions/" + r.json()["record"]["id"])["decision"] == "error"
    assert d.get("/readyz")["ready"] is True
    assert httpx.get(d.url + "/healthz").json() == {"ok": True}
    assert d.stop() == 0  # SIGTERM: the frame in flight finishes, then a clean exit


def test_fleet_section_starts_the_agent_which_drains_the_outbox(tmp_path: Path, bundles, keys, daemons,
                                                               mosquitto) -> None:
    topic = "shadowline/dev/dev-1/predictions"
    listener = MqttListener(mosquitto.port, topic)
    cfg = write_config(tmp_path, keys, pcb_release(bundles),
                       fleet={"broker_url": mosquitto.url, "releases_dir": "releases"})
    names = fill_inbox(tmp_path / "inbox", PCB)
    d = daemons(cfg)
    d.wait_frames(len(names))
    ids = {r["id"] for rs in active_records(tmp_path / "shadowline.db").values() for r in rs}
    deadline = time.monotonic() + 30
    got: set[str] = set()
    while time.monotonic() < deadline and got != ids:
        got = {rec["id"] for m in listener.messages for rec in m["records"]}
        time.sleep(0.1)
    listener.close()
    assert got == ids
    assert all(m["device"] == "dev-1" and m["kind"] == "predictions" for m in listener.messages)
    # the agent reports what the daemon runs (retained), through the AgentHost contract
    reported = MqttListener(mosquitto.port, "shadowline/dev/dev-1/reported")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not reported.messages:
        time.sleep(0.1)
    reported.close()
    last = reported.messages[-1]
    assert last["active"] == "pcb@1" and last["backends"] == ["onnxruntime:CPUExecutionProvider"]


def test_fleet_section_without_agent_fails_clearly(tmp_path: Path, bundles, keys, monkeypatch) -> None:
    import sys

    from edge.config import load_config
    from edge.daemon import Daemon
    from runtime.errors import ConfigError

    monkeypatch.setitem(sys.modules, "edge.agent.runtime", None)  # as if the agent were not installed
    cfg = write_config(tmp_path, keys, pcb_release(bundles), fleet={"broker_url": "mqtt://127.0.0.1:1"},
                       api={"enabled": False})
    d = Daemon(load_config(cfg))
    try:
        with pytest.raises(ConfigError, match=r"fleet: the device agent \(edge.agent.runtime\) is not available"):
            d.start()
    finally:
        d.stop()


def test_start_up_errors_exit_with_a_clear_message(tmp_path: Path, bundles, keys) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cfg = write_config(tmp_path / "a", keys, pcb_release(bundles), api={"port": port})
        p = subprocess.run([sys.executable, "-m", "shadowline.cli", "edge", "run", "--config", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert p.returncode == 2 and f"api: cannot listen on 127.0.0.1:{port}" in p.stderr
    bad = pcb_release(bundles)
    bad["stages"][0]["bundle"] = str(tmp_path / "missing-v1.0")
    cfg = write_config(tmp_path / "b", keys, bad)
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "edge", "run", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 4 and "missing-v1.0' not found" in p.stderr


def test_fleet_section_without_a_fleet_key_refuses_to_start_the_agent(tmp_path: Path, bundles, keys) -> None:
    """No fleet control key: anyone who can publish on the broker would steer the device, so the daemon does not
    start (a ConfigError: exit 2, naming the key) unless the config says allow_unsigned_control."""
    from edge.config import load_config
    from edge.daemon import Daemon
    from runtime.errors import ConfigError

    cfg = write_config(tmp_path, keys, pcb_release(bundles), fleet={"broker_url": "mqtt://127.0.0.1:1",
                                                                    "fleet_keys": []}, api={"enabled": False})
    d = Daemon(load_config(cfg))
    try:
        with pytest.raises(ConfigError, match="fleet.fleet_keys: no fleet control key configured"):
            d.start()
    finally:
        d.stop()


@pytest.mark.slow
def test_fleet_desired_state_swaps_the_running_daemon(tmp_path: Path, bundles, keys, daemons, mosquitto) -> None:
    """The real agent inside the real daemon: a retained desired state is downloaded, verified, checked and
    activated; frames after the swap carry the new release."""
    import paho.mqtt.client as mqtt

    from fleet.protocol import Topics
    from tests.agent.conftest import desired_for, make_tar, signed
    from tests.agent.servers import ArtifactServer
    from tests.conftest import export_preset

    out = tmp_path / "artifacts"
    out.mkdir()
    tar = make_tar(export_preset("pcb-aoi", tmp_path / "export", None, version="1.1"), out, keys["private"])
    server = ArtifactServer(out).start()
    try:
        cfg = write_config(tmp_path, keys, pcb_release(bundles),
                           fleet={"broker_url": mosquitto.url, "releases_dir": "releases",
                                  "trust_store": str(keys["trust"])})
        d = daemons(cfg)
        fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet")
        fleet.connect("127.0.0.1", mosquitto.port)
        fleet.loop_start()
        desired = desired_for(server, tar, "dev-1", 1, release_revision=2)
        fleet.publish(Topics().device("dev-1", "desired"), signed(desired, keys), qos=1,
                       retain=True).wait_for_publish(5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and d.get("/v1/status")["release"] != "pcb-screen@2":
            time.sleep(0.1)
        fleet.loop_stop()
        fleet.disconnect()
        st = d.get("/v1/status")
        assert st["release"] == "pcb-screen@2", st
        assert st["pipeline"]["active"]["models"] == {"screen": "pcb-aoi-v1.1"}
        names = fill_inbox(tmp_path / "inbox", PCB)
        d.wait_frames(len(names))
        recs = active_records(tmp_path / "shadowline.db")
        assert {r["release"] for n in names for r in recs[n]} == {"pcb-screen"}
        assert {r["models"]["screen"] for n in names for r in recs[n]} == {"pcb-aoi-v1.1"}
    finally:
        server.stop()
