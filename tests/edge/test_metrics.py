"""The device's metrics: /metrics by the book (promtool), and the windowed metrics records the fleet reads, from a
real daemon whose runner is slowed so that its queue grows, then drains."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edge.sources import Frame
from tests.conftest import free_port
from tests.edge.conftest import PCB, PHOTOS, pcb_release, photo_release
from tests.edge.test_daemon_inprocess import make_daemon, wait

ROOT = Path(__file__).resolve().parents[2]


def promtool() -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/install.sh installs Debian's prometheus package"
    return exe


def test_metrics_pass_promtool_and_name_what_runs(tmp_path: Path, bundles, keys) -> None:
    port = free_port()
    release = photo_release(bundles)
    release["candidate"] = photo_release(bundles, revision=2, verify={"default": 0.5, "dog": 0.6})
    d = make_daemon(tmp_path, keys, release, api={"port": port})
    d.start()
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        for f in sorted(PHOTOS.iterdir())[:5]:
            assert client.post("/v1/infer", content=f.read_bytes()).status_code == 200
        assert client.post("/v1/infer", content=b"not an image").status_code == 422
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    finally:
        d.stop()
    (tmp_path / "metrics.txt").write_text(text)
    check = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for f in families.values():
        assert f.documentation, f"{f.name} has no HELP"
        assert not any(u in f.name for u in ("_ms", "_mb", "_kb")), f"{f.name}: base units (seconds, bytes)"
    counters = {n for n, f in families.items() if f.type == "counter"}
    assert {"shadowline_frames", "shadowline_decisions", "shadowline_errors", "shadowline_queue_dropped_frames",
            "shadowline_queue_rejected_frames", "shadowline_retention_evicted_images",
            "shadowline_degraded_frames"} <= counters
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("shadowline_frames_total", (("source", "http"),))] == 6
    assert samples[("shadowline_errors_total", (("reason", "image"),))] == 1
    assert families["shadowline_stage_latency_seconds"].type == "histogram"
    build = [s for s in families["shadowline_build_info"].samples if s.name == "shadowline_build_info"]
    assert len(build) == 1 and build[0].labels["version"] and build[0].labels["onnxruntime"]
    release_info = sorted((s.labels["role"], s.labels["release"], s.labels["mode"], s.labels["stage"],
                           s.labels["bundle"], s.labels["version"])
                          for s in families["shadowline_release_info"].samples if s.name == "shadowline_release_info")
    assert release_info == [("active", "photos@1", "shadow", "screen", "squeezenet-v1.0", "1.0"),
                            ("active", "photos@1", "shadow", "verify", "yolox-nano-v1.0", "1.0"),
                            ("candidate", "photos@2", "shadow", "screen", "squeezenet-v1.0", "1.0"),
                            ("candidate", "photos@2", "shadow", "verify", "yolox-nano-v1.0", "1.0")]
    assert samples[("process_resident_memory_bytes", ())] > 50e6


def metrics_records(d) -> list[dict]:
    rows = d.store.query("SELECT payload FROM outbox WHERE kind = 'metrics' ORDER BY seq")
    return [json.loads(r["payload"]) for r in rows]


def test_slowed_runner_makes_queue_depth_grow_then_drain_in_metrics_records(tmp_path: Path, bundles, keys) -> None:
    from fleet.analytics.alerts import AlertTracker
    from fleet.analytics.pillars import snapshot
    from fleet.analytics.windows import Window
    from fleet.protocol import MetricsRecord

    # one frame per model call: the slowed call then costs every frame its 80 ms (batches would share it)
    d = make_daemon(tmp_path, keys, pcb_release(bundles), queue={"max_size": 500},
                    metrics={"window_s": 0.4, "sample_s": 0.1}, pipeline={"max_batch": 1})
    d.start()
    runner = d.frames.slot.current.active.stages[0][1].runner
    real_infer = runner._infer

    def slowed(feeds):
        time.sleep(0.08)  # the runner is slowed: ~12 frames/s where the feed brings ~33
        return real_infer(feeds)

    runner._infer = slowed  # type: ignore[method-assign]
    data = (PCB / "Normal_33.png").read_bytes()
    done = threading.Event()
    committed: list[str] = []

    def feed() -> None:
        for i in range(90):
            d.queue.put_nowait(Frame(f"http:{i}", data=data, suffix=".png",
                                     on_done=lambda out: committed.append(out.decision)))
            time.sleep(0.03)  # the line's pace, not a wait for a result
        done.set()

    try:
        start_records = len(metrics_records(d))
        threading.Thread(target=feed, daemon=True).start()
        wait(lambda: done.is_set(), 30)
        wait(lambda: len(committed) == 90, 60)
        n = len(metrics_records(d))
        wait(lambda: len(metrics_records(d)) >= n + 2, 10)  # two more windows with the queue empty
        recs = metrics_records(d)[start_records:]
    finally:
        d.stop()
    assert set(committed) == {"pass"}
    depths = [r["values"]["queue_depth"] for r in recs]
    peak = depths.index(max(depths))
    assert max(depths) >= 10, depths
    # growing: at least four readings in a row strictly rising before the peak (what queue_growing needs) ...
    rising = max(sum(1 for _ in run) for run in _runs(depths[: peak + 1], lambda a, b: b > a))
    assert rising >= 4, depths
    # ... then draining to empty
    assert depths[-1] == 0 and all(b <= a for a, b in zip(depths[peak:], depths[peak + 1:])), depths
    for r in recs:
        v = r["values"]
        assert r["device"] == "dev-1" and r["release"] == "pcb" and 0.3 < r["window_s"] < 5.0
        assert v["queue_capacity"] == 500 and v["queue_depth_max"] >= v["queue_depth"]
        assert v["rss_bytes"] > 50e6 and "cpu_percent" in v
    assert sum(r["values"]["frames"] for r in recs) == 90
    busy = [r for r in recs if r["values"]["frames"] > 0]
    assert all(r["values"]["latency_ms_p95:screen"] >= 80 for r in busy)  # the slowed runner shows in latency

    # the fleet's queue_growing rule on these very records: it fires while the queue grows and clears as it drains
    tracker = AlertTracker()
    t0 = datetime.fromisoformat(recs[0]["created_at"]) - timedelta(seconds=1)
    changes = []
    for k in range(len(recs)):
        models = [MetricsRecord.model_validate(r) for r in recs[: k + 1]]
        window = Window(start=t0, end=datetime.fromisoformat(recs[k]["created_at"]) + timedelta(seconds=1))
        changes += [(a.rule, a.state) for a in tracker.update(snapshot([], [], models, window), None,
                                                               at=recs[k]["created_at"])]
    assert changes[:2] == [("queue_growing", "raised"), ("queue_growing", "cleared")], changes


def _runs(xs: list[float], ok) -> list[list[float]]:
    """Maximal runs of consecutive values where ok(previous, next) holds."""
    runs, cur = [], xs[:1]
    for a, b in zip(xs, xs[1:]):
        if ok(a, b):
            cur.append(b)
        else:
            runs.append(cur)
            cur = [b]
    return runs + [cur]


def test_health_readings_carry_tegrastats_temperatures_power_and_gpu_load(tmp_path: Path, monkeypatch) -> None:
    """On a Jetson `tegrastats` is on PATH (here a stand-in printing a real JetPack 6 line, as in
    tests/hwbench/test_tegrastats.py): the readings that go into every metrics record carry its temperatures, power
    rails and GPU load; without it, memory and CPU only, temperatures from the thermal zones."""
    import os

    from edge.health import Health, thermal_zones
    from tests.hwbench.test_tegrastats import ORIN

    exe = tmp_path / "tegrastats"
    exe.write_text(f"#!/bin/sh\nwhile true; do echo '{ORIN}'; sleep 0.05; done\n")
    os.chmod(exe, 0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    h = Health().start()
    try:
        wait(lambda: "power_mw:VDD_IN" in h.reading(), 10)
        v = h.reading()
    finally:
        h.stop()
    assert v["power_mw:VDD_IN"] == 4786.0 and v["power_mw:VDD_SOC"] == 1492.0
    assert v["temp_c:gpu"] == 47.468 and v["temp_c:tj"] == 47.5 and v["gpu_percent"] == 37.0
    assert v["rss_bytes"] > 0 and "cpu_percent" in v
    off = Health(use_tegrastats=False).start()
    try:
        plain = off.reading()
    finally:
        off.stop()
    assert not any(k.startswith("power_mw:") for k in plain) and "gpu_percent" not in plain
    assert {k for k in plain if k.startswith("temp_c:")} == {f"temp_c:{k}" for k in thermal_zones()}


def test_prometheus_client_loads_at_first_use_and_keeps_what_was_registered_before() -> None:
    """edge.metrics imports prometheus_client at the first count, reading or scrape (not at daemon start): collectors
    added before that are registered then, counters read before it are 0, and the exposition has them all."""
    code = """
import json, sys
from edge.metrics import Metrics

class Probe:
    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        yield GaugeMetricFamily('shadowline_probe', 'A collector added before the first use.', value=7)

m = Metrics()
m.add_collector(Probe())
before = {'loaded': 'prometheus_client' in sys.modules, 'frames_before': m.value('frames_total')}
m.inc('frames_total', source='http')
m.inc('frames_total', 2, source='folder')
m.observe('decode', 4.0)
text = m.render().decode()
print(json.dumps({**before, 'after': 'prometheus_client' in sys.modules, 'frames': m.value('frames_total'),
                  'http': m.value('frames_total', source='http'), 'text': text}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["loaded"] is False and got["frames_before"] == 0 and got["after"] is True
    assert got["frames"] == 3 and got["http"] == 1
    families = {f.name: f for f in text_string_to_metric_families(got["text"])}
    assert families["shadowline_probe"].samples[0].value == 7
    assert families["shadowline_frames"].type == "counter"
    assert families["shadowline_stage_latency_seconds"].type == "histogram"
    assert "process_cpu_seconds" in families
