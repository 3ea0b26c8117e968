"""Inspectors' images reach the fleet: a real daemon process keeps the real PCB images, an inspector overrides one
on the device's review API, and the near-threshold and overridden images are uploaded to a real fleet service
process (`shadowline fleet serve`, its embedded broker with device credentials) with the device token; the
predictions and the verdict travel over MQTT; `fleet promote-data` then builds the dataset from what the fleet holds,
images included. Budgets and refusals are tested in tests/edge/test_upload_budgets.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, until
from tests.edge.conftest import INSPECTOR, PCB, DaemonProcess, write_config
from tests.edge.fleet_process import ROOT


def pcb_near_release(bundles: dict[str, Path]) -> dict[str, Any]:
    # threshold 0.95 with band 0.1: both Defective boards (scores 0.997 and 1.0) are near the threshold, the
    # Normal boards (0.003 and 0.0) are not
    return {"name": "pcb", "revision": 1, "mode": "shadow",
            "stages": [{"role": "screen", "bundle": str(bundles["pcb-aoi"]), "candidate_classes": ["Defective"],
                        "threshold": 0.95}]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_overridden_and_near_threshold_images_reach_the_fleet_and_promote_data_uses_them(
        tmp_path: Path, bundles, keys, daemons, fleet_process):
    fleet = fleet_process(["dev-1"])
    home = tmp_path / "dev-1"
    home.mkdir()
    cfg = write_config(home, keys, pcb_near_release(bundles),
                       retention={"sample_pct": 100.0, "band": 0.1},  # every image kept; only cases go up
                       fleet=fleet.device_section("dev-1", home),
                       uploads={"url": fleet.url, "cases": ["override", "near_threshold"], "poll_s": 0.2,
                                "bandwidth_bps": 2_000_000})
    d: DaemonProcess = daemons(cfg)
    inbox = home / "inbox"
    originals = {}
    for f in sorted(PCB.iterdir()):
        originals[f.name] = f.read_bytes()
        shutil.copy(f, inbox / f.name)
    d.wait_frames(4)
    recs = {r["source"].split(":", 1)[1]: r for r in d.get("/v1/predictions", params={"limit": 10})}
    assert {n for n, r in recs.items() if r["decision"] == "flag"} == {"Defective_02.png", "Defective_25.png"}
    # the inspector says the model missed a defect on a board it passed: an override
    missed = recs["Normal_33.png"]
    r = httpx.post(d.url + "/v1/reviews", json={"prediction_id": missed["id"], "verdict": "missed_defect",
                                                "defect_class": "Defective"}, headers=INSPECTOR, timeout=30)
    assert r.status_code == 201 and r.json()["override"] is True

    st = until(lambda: (u := d.get("/v1/status")["uploads"])["uploaded"] == 3 and u["pending"] == 0 and u, 60,
               "three uploads")
    assert st["refused"] == 0 and st["dropped"] == 0 and st["spool_bytes"] == 0
    assert st["uploaded_bytes"] == sum(len(originals[n]) for n in ("Defective_02.png", "Defective_25.png",
                                                                   "Normal_33.png"))
    rows = {row["prediction_id"]: row for row in fleet.api("/api/images", device="dev-1")}
    want = {recs[n]["id"]: n for n in ("Defective_02.png", "Defective_25.png", "Normal_33.png")}
    assert set(rows) == set(want)  # Normal_35 was kept but is no case: it stays on the device
    for pid, name in want.items():
        assert rows[pid]["sha256"] == sha(originals[name])  # the original bytes, content-addressed
        assert fleet.api(f"/api/images/{rows[pid]['sha256']}") == originals[name]
    assert rows[missed["id"]]["reasons"] == "override"
    assert set(rows[recs["Defective_02.png"]["id"]]["reasons"].split(",")) == {"near_threshold"}
    text = httpx.get(d.url + "/metrics", timeout=30).text
    assert "shadowline_upload_images_uploaded_total 3.0" in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

    # the predictions and the verdict reach the fleet over MQTT; promote-data takes the images from the fleet
    until(lambda: (s := fleet.api("/api/ingest")["stored"])["predictions"] >= 4 and s["reviews"] >= 1, 60,
          "predictions and the verdict in the fleet store")
    out = tmp_path / "dataset"
    r = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", "promote-data", "--json", "--data-dir",
                        str(fleet.data), "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    by_id = {s["prediction_id"]: s for s in manifest["samples"]}
    assert missed["id"] in by_id  # the override, labelled with the inspector's class, its image from the fleet
    sample = by_id[missed["id"]]
    assert sample["label"] == "Defective"
    assert (out / sample["file"]).read_bytes() == originals["Normal_33.png"]
    assert summary["missing"] == len(manifest["missing"])
    assert missed["id"] not in {m["prediction_id"] for m in manifest["missing"]}


def test_the_upload_resumes_after_the_fleet_was_down(tmp_path: Path, bundles, keys, daemons, fleet_process):
    """The fleet is not there when the image is spooled: the device retries with backoff and delivers once the
    fleet is back (same URL), and a restart of the daemon re-sends nothing."""
    port = free_port()
    home = tmp_path / "dev-1"
    home.mkdir()
    cfg = write_config(home, keys, pcb_near_release(bundles), retention={"sample_pct": 0.0, "band": 0.1},
                       uploads={"url": f"http://127.0.0.1:{port}", "token": "not-yet", "poll_s": 0.2,
                                "retry_backoff_s": 0.2, "max_backoff_s": 1.0})
    d = daemons(cfg)
    shutil.copy(PCB / "Defective_02.png", home / "inbox" / "Defective_02.png")
    d.wait_frames(1)
    until(lambda: d.get("/v1/status")["uploads"]["retries"] >= 2, 60, "failed attempts while the fleet is down")
    st = d.get("/v1/status")["uploads"]
    assert st["pending"] == 1 and st["uploaded"] == 0 and "ConnectError" in (st["last_error"] or "")
    d.stop()
    # now the fleet exists at that URL, and the device's token with it
    fleet = fleet_process(["dev-1"], http_port=port)
    text = cfg.read_text().replace("not-yet", fleet.device_tokens["dev-1"])
    cfg.write_text(text)
    d2 = daemons(cfg)
    until(lambda: d2.get("/v1/status")["uploads"]["uploaded"] == 1, 60, "the upload after the restart")
    assert len(fleet.api("/api/images", device="dev-1")) == 1
    d2.stop()
    d3 = daemons(cfg)
    st3 = until(lambda: (u := d3.get("/v1/status")["uploads"])["scans"] >= 2 and u, 30, "two scans for cases")
    assert st3["spooled"] == 0 and st3["pending"] == 0 and len(fleet.api("/api/images", device="dev-1")) == 1
    assert os.listdir(home / "uploads") == []
