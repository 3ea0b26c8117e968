"""`shadowline hwbench` end to end: report files, bad input, and --publish to a real Mosquitto broker."""

from __future__ import annotations

import json
import queue
import shutil
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fleet.protocol import Batch, EventRecord, Topics, decode
from hwbench.publish import PublishError, PublishTarget, build_message, publish
from hwbench.report import Report
from runtime.errors import ConfigError
from shadowline.cli import main

FAST = ["--warmup", "1", "--iterations", "5", "--seconds", "0", "--quiet"]


def subscribe(broker_url: str, topic: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    host, port = broker_url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-test")
    subscribed = queue.Queue()
    c.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload, msg.qos))
    c.on_subscribe = lambda *a: subscribed.put(True)
    c.connect(host, int(port))
    c.loop_start()
    c.subscribe(topic, qos=1)
    subscribed.get(timeout=5)
    return c, got


def test_cli_writes_reports_for_each_shipped_bundle(bundles, keys, tmp_path: Path, capsys):
    for path in bundles.values():
        rc = main(["hwbench", str(path), "--trust-store", str(keys["trust"]), "--out", str(tmp_path), *FAST])
        assert rc == 0
        bid = path.name
        raw = (tmp_path / f"hwbench-{bid}.json").read_text()
        data = json.loads(raw)
        assert Report.model_validate_json(raw).bundle.id == bid  # the JSON reads back into the schema
        assert data["schema_id"] == "shadowline.hwbench" and data["bundle"]["id"] == bid
        ok = [c for c in data["configs"] if c["status"] == "ok"]
        assert {c["precision"] for c in ok} == {"fp32", "fp16"}
        skipped = {c["backend"] for c in data["configs"] if c["status"] == "skipped"}
        assert skipped == {"tensorrt", "coreml"}
        md = (tmp_path / f"hwbench-{bid}.md").read_text()
        assert "## Verdict" in md and "real-time production line" in md
        for c in ok:
            assert c["id"] in md
        png = (tmp_path / f"hwbench-{bid}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    out = capsys.readouterr().out
    assert "realtime-line" in out and "jetson-throughput" in out


def test_cli_bad_input(bundles, keys, tmp_path: Path, capsys):
    assert main(["hwbench", str(bundles["squeezenet"]), "--batch-sizes", "4", *FAST, "--out", str(tmp_path)]) == 2
    assert "outside the bundle's range 1..1" in capsys.readouterr().err
    targets = tmp_path / "t.yaml"
    targets.write_text("targets:\n  - name: x\n")
    assert main(["hwbench", str(bundles["squeezenet"]), "--targets", str(targets), *FAST]) == 2
    assert "exactly one of max_latency_ms or min_ips" in capsys.readouterr().err
    assert main(["hwbench", str(bundles["squeezenet"]), "--publish", *FAST]) == 2
    assert "--publish needs --broker and --device-id" in capsys.readouterr().err
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["squeezenet"], tampered)
    with open(tampered / "model.onnx", "r+b") as fh:
        fh.seek(2000)
        fh.write(b"\x00\x01\x02")
    assert main(["hwbench", str(tampered), *FAST, "--out", str(tmp_path)]) == 4
    assert "sha256" in capsys.readouterr().err
    assert not list(tmp_path.glob("hwbench-*"))  # nothing written for refused input


def test_publish_sends_one_capability_record(bundles, mosquitto, tmp_path: Path):
    topic = Topics("plant7").device("jetson-03", "events")
    sub, got = subscribe(mosquitto.url, topic)
    try:
        rc = main(["hwbench", str(bundles["pcb-aoi"]), "--batch-sizes", "1", "--precisions", "fp32", *FAST,
                   "--out", str(tmp_path), "--publish", "--broker", mosquitto.url, "--device-id", "jetson-03",
                   "--prefix", "plant7"])
        assert rc == 0
        t, payload, qos = got.get(timeout=5)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert t == "plant7/dev/jetson-03/events" and qos == 1
    batch = decode(t, payload, Batch)
    assert batch.kind == "events" and batch.device == "jetson-03" and len(batch.records) == 1
    rec = EventRecord.model_validate(batch.records[0])
    assert rec.kind == "capability" and rec.device == "jetson-03"
    report = json.loads((tmp_path / "hwbench-pcb-aoi-v1.0.json").read_text())
    assert rec.detail["bundle"] == "pcb-aoi-v1.0"
    assert rec.detail["model_sha256"] == report["bundle"]["model_sha256"]
    (cfg,) = rec.detail["configs"]
    (measured,) = [c for c in report["configs"] if c["status"] == "ok"]
    assert cfg["id"] == measured["id"] and cfg["p50_ms"] == measured["latency_ms"]["p50"]
    assert rec.detail["verdicts"]["realtime-line"]["status"] == \
        {v["target"]: v for v in report["verdicts"]}["realtime-line"]["status"]


def test_publish_with_broker_credentials(bundles, tmp_path: Path):
    """A broker that refuses anonymous clients: wrong password is refused with a clear error, the device's
    credentials (user = device id by default, password from a file) get the record through."""
    import subprocess

    from tests.conftest import Mosquitto

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "dev-1", "s3cret"], check=True,
                   capture_output=True)
    broker = Mosquitto(tmp_path / "b", extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n"
                       # as root, Mosquitto drops to user mosquitto, who cannot read pytest's private tmp dirs
                       "user root\n").start()
    try:
        wrong = PublishTarget(broker_url=broker.url, device_id="dev-1", password="nope", timeout_s=3)
        with pytest.raises(PublishError, match="refused the connection"):
            publish(wrong, {"x": 1})
        anonymous = PublishTarget(broker_url=broker.url, device_id="dev-1", timeout_s=3)
        with pytest.raises(PublishError, match="refused the connection"):
            publish(anonymous, {"x": 1})
        (tmp_path / "pw").write_text("s3cret\n")
        got: queue.Queue = queue.Queue()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet")
        sub.username_pw_set("dev-1", "s3cret")
        sub.on_message = lambda _c, _u, msg: got.put(msg.payload)
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("shadowline/dev/dev-1/events", qos=1)
        sub.loop_start()
        time.sleep(0.3)
        rc = main(["hwbench", str(bundles["squeezenet"]), "--precisions", "fp32", *FAST, "--out", str(tmp_path),
                   "--publish", "--broker", broker.url, "--device-id", "dev-1", "--password-file",
                   str(tmp_path / "pw")])
        assert rc == 0
        batch = decode("t", got.get(timeout=5), Batch)
        assert batch.records[0]["kind"] == "capability"
        sub.loop_stop()
        sub.disconnect()
    finally:
        broker.stop()


def test_publish_unreachable_broker_is_a_clear_error():
    from tests.conftest import free_port

    target = PublishTarget(broker_url=f"mqtt://127.0.0.1:{free_port()}", device_id="dev-1", timeout_s=2)
    with pytest.raises(PublishError, match="cannot reach the broker"):
        publish(target, {"x": 1})


def test_message_validation():
    topic, payload, rid = build_message("dev-1", {"a": 1}, "shadowline")
    assert topic == "shadowline/dev/dev-1/events"
    assert json.loads(payload)["records"][0]["id"] == rid
    with pytest.raises(ConfigError, match="invalid device id"):
        build_message("bad/id", {})
    with pytest.raises(ConfigError, match="expected mqtt://host:port or mqtts://host:port"):
        publish(PublishTarget(broker_url="http://x:1", device_id="d"), {})
    with pytest.raises(ConfigError, match="--ca-file is for mqtts://"):
        publish(PublishTarget(broker_url="mqtt://x:1", device_id="d", ca_file="ca.pem"), {})
