"""A populated fleet for dashboard tests: the real PCB bundle, two releases, a group of two devices, a month of
prediction records whose scores come from running the real model on the real PCB images, inspector reviews, and
a rollout in progress."""

from __future__ import annotations

import io
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fleet.protocol import PredictionRecord, Reported, ReviewRecord, StageOutput
from tests.conftest import IMAGES

DEVICES = ("dev-a", "dev-b")


def bundle_tar(bundle_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name)
    return buf.getvalue()


def model_outputs(bundle_dir: Path) -> list[tuple[str, dict[str, float], float, float]]:
    """(image name, scores, measured model ms, measured decode ms) of the real PCB model on the real PCB images."""
    from runtime.bundle import load_bundle
    from runtime.predictor import BundleModel
    from runtime.processing.image import read_image

    model = BundleModel(load_bundle(bundle_dir)).load()
    try:
        out = []
        for path in sorted((IMAGES / "pcb_winml").glob("*.png")):
            t0 = time.perf_counter()
            image = read_image(path)
            decode_ms = (time.perf_counter() - t0) * 1000
            res = model.predict([image])[0]
            out.append((path.name, res.scores, res.preprocess_ms + res.infer_ms, decode_ms))
        return out
    finally:
        model.close()


def records(outputs, release: str, revision: int, now: datetime, days: int = 20, per_day: int = 8):
    """Predictions spread over the last `days` days on both devices, and a review for each: inspectors agree
    except on every 9th item (a false positive corrected) and every 13th (a missed defect). Latencies are keyed as
    the daemon keys them (edge/records.py): decode, the stage, and `total` = the model stages without decode."""
    preds, revs = [], []
    k = 0
    for d in range(days, -1, -1):
        for i in range(per_day):
            name, scores, ms, decode_ms = outputs[k % len(outputs)]
            dev = DEVICES[k % 2]
            t = (now - timedelta(days=d, hours=i + 1)).isoformat()
            defect = scores["Defective"] >= 0.5
            flagged = [("Defective", scores["Defective"])] if defect else []
            p = PredictionRecord(
                device=dev, created_at=t, source=f"folder:{name}", release=release, revision=revision, mode="shadow",
                models={"verify": "pcb-aoi-v1.0"}, thresholds={"default": 0.5},
                stages=[StageOutput(role="verify", bundle="pcb-aoi-v1.0", scores=scores, hits=flagged,
                                    latency_ms=ms)],
                decision="flag" if defect else "pass", flagged=flagged,
                top_label=max(scores, key=scores.get), top_score=max(scores.values()),
                latency_ms={"decode": round(decode_ms, 3), "verify": round(ms, 3), "total": round(ms, 3)})
            preds.append(p)
            verdict = "confirm"
            if k % 9 == 0 and defect:
                verdict = "false_positive"
            elif k % 13 == 0 and not defect:
                verdict = "missed_defect"
            revs.append(ReviewRecord(
                prediction_id=p.id, device=dev, created_at=t, inspector="ann", verdict=verdict,
                defect_class="Defective" if verdict == "missed_defect" else None,
                override=verdict != "confirm", model_decision=p.decision, release=release, revision=revision,
                top_label=p.top_label, top_score=p.top_score))
            k += 1
    return preds, revs


def populate(fleet, bundle_dir: Path, now: datetime | None = None) -> None:
    """Fill a Fleet directly (no MQTT): bundle, releases, devices, records, a finished and a running rollout."""
    from fleet.protocol import ReleaseSpec
    from fleet.rollout import RolloutRequest

    now = now or datetime.now(timezone.utc)
    tar = Path(fleet.config.data_dir) / "upload.tar"
    tar.write_bytes(bundle_tar(bundle_dir))
    fleet.registry.push(tar)
    spec = ReleaseSpec(name="pcb-line", mode="shadow", stages=[
        {"role": "verify", "bundle": "pcb-aoi-v1.0", "thresholds": {"default": 0.5}}])
    fleet.releases.create(spec)
    fleet.releases.create(ReleaseSpec(name="pcb-line", mode="shadow", stages=[
        {"role": "verify", "bundle": "pcb-aoi-v1.0", "thresholds": {"default": 0.4}}]))
    for d in DEVICES:
        fleet.devices.add(d, ["line-3"])
        fleet.devices.seen(d, "online")
    preds, revs = records(model_outputs(bundle_dir), "pcb-line", 1, now)
    fleet.store.insert_records("predictions", [p.model_dump(mode="json") for p in preds])
    fleet.store.insert_records("reviews", [r.model_dump(mode="json") for r in revs])
    for ref, waves in (("pcb-line@1", ["100%"]), ("pcb-line@2", ["1", "100%"])):
        st = fleet.rollouts.start(RolloutRequest(release=ref, group="line-3", waves=waves))
        for dev in [t["device"] for t in st["targets"] if t["state"] == "activating"]:
            fleet.devices.report(Reported(device=dev, active=ref, desired_revision=fleet.desired.revision(dev),
                                          activation={"state": "committed"}))
        fleet.rollouts.tick()
        deadline = time.monotonic() + 5
        while fleet.rollouts.status(st["id"])["state"] == "running" and ref.endswith("@1"):
            fleet.rollouts.tick()
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollout of {ref} did not complete: {fleet.rollouts.status(st['id'])}")


def add_device_detail(fleet, bundle_dir: Path, workdir: Path, now: datetime | None = None) -> None:
    """What a device page shows beyond predictions, from the real parts where there are any: a capability record
    of a real `shadowline hwbench` run of the PCB bundle on this machine (dev-a), an error record with the message
    the real decoder gives for a truncated PNG, a record refused by the fleet's real ingest validation (a time in
    the future), and a day of hourly metrics records (their readings are made up: queue depth rising then
    draining, memory, CPU, one thermal zone)."""
    from fleet.protocol import Batch, EventRecord, MetricsRecord, Topics, encode
    from hwbench.report import Report, capability_summary
    from runtime.errors import ImageError
    from runtime.processing.image import decode_image
    from shadowline.cli import main

    now = now or datetime.now(timezone.utc)
    out = workdir / "hwbench"
    rc = main(["hwbench", str(bundle_dir), "--batch-sizes", "1", "--precisions", "fp32", "--warmup", "1",
               "--iterations", "5", "--seconds", "0", "--quiet", "--out", str(out)])
    assert rc == 0, "hwbench failed"
    (path,) = out.glob("hwbench-*.json")
    summary = capability_summary(Report.model_validate_json(path.read_text()))
    fleet.store.insert_records("events", [EventRecord(device="dev-a", kind="capability", detail=summary)])

    png = (IMAGES / "pcb_winml" / "Normal_33.png").read_bytes()
    try:
        decode_image(png[: len(png) // 3], name="Normal_33.png")
        raise AssertionError("a truncated PNG decoded")
    except ImageError as err:
        error = str(err)
    bad = PredictionRecord(device="dev-a", created_at=(now - timedelta(minutes=20)).isoformat(),
                           source="folder:Normal_33.png", release="pcb-line", revision=1, mode="shadow",
                           decision="error", error=error, latency_ms={"decode": 2.5})
    fleet.store.insert_records("predictions", [bad])
    future = PredictionRecord(device="dev-b", created_at=(now + timedelta(days=2)).isoformat(), source="http",
                              release="pcb-line", revision=1, mode="shadow", decision="pass")
    topic = Topics("shadowline").device("dev-b", "predictions")
    fleet.ingest.handle(topic, encode(Batch(device="dev-b", kind="predictions",
                                            records=[future.model_dump(mode="json")])))
    assert [r["reason"] for r in fleet.store.refused()] == ["timestamp_in_future"]

    mets = []
    for dev, scale in (("dev-a", 1.0), ("dev-b", 0.5)):
        for h in range(24, 0, -1):
            depth = max(0.0, (12 - abs(h - 6)) * 3 * scale) if h <= 12 else 0.0
            mets.append(MetricsRecord(device=dev, created_at=(now - timedelta(hours=h)).isoformat(), release="pcb-line",
                                      revision=1, window_s=60.0,
                                      values={"queue_depth": depth, "queue_capacity": 64.0, "frames": 8.0,
                                              "rss_bytes": 212.0 * 2**20, "cpu_percent": 41.0,
                                              "temp_c:cpu-thermal": 52.5}))
    fleet.store.insert_records("metrics", mets)
