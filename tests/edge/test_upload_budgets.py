"""The upload path's limits against a real fleet service process: the device's spool stays within its disk budget
(overrides outrank near-threshold images), the bandwidth limit paces the bytes, the fleet's own disk budget answers
507 and the device keeps the image and retries, and the fleet's route refuses what it must (token, device, sha256,
size, a second image for the same prediction)."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from edge.config import UploadsConfig
from edge.store import Store
from edge.uploads import Throttle, Uploader
from fleet.protocol import PredictionRecord, ReviewRecord
from tests.edge.conftest import PCB
from tests.edge.fleet_process import FleetProcess

BOARDS = ["Defective_02.png", "Defective_25.png", "Normal_33.png", "Normal_35.png"]
SIZES = {n: (PCB / n).stat().st_size for n in BOARDS}


def device_store(tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """A device database holding one committed prediction per board with its kept image (as the daemon commits
    them), the boards' ids by name."""
    store = Store(tmp_path / "device.db")
    kept = tmp_path / "images"
    kept.mkdir()
    ids = {}
    for n in BOARDS:
        rec = PredictionRecord(device="dev-1", source=f"folder:{n}", release="pcb", revision=1, mode="shadow",
                               models={"screen": "pcb-aoi-v1.0"}, thresholds={"screen": 0.95}, decision="pass")
        path = kept / f"{rec.id}.png"
        shutil.copy(PCB / n, path)
        store.commit_frame([rec], None, {rec.id: (path, SIZES[n], ["near_threshold"])})
        ids[n] = rec.id
        time.sleep(0.01)  # distinct creation times: "oldest first" is well defined
    return store, ids


def override(store: Store, pid: str) -> None:
    store.add_review(ReviewRecord(prediction_id=pid, device="dev-1", inspector="ann", verdict="missed_defect",
                                  defect_class="Defective", override=True, model_decision="pass", release="pcb",
                                  revision=1))


def uploader(store: Store, tmp_path: Path, fleet: FleetProcess, **cfg: Any) -> Uploader:
    config = UploadsConfig.model_validate({"url": fleet.url, "spool_dir": str(tmp_path / "spool"), **cfg})
    return Uploader(config, store, "dev-1", threading.Event(), token=fleet.device_tokens["dev-1"])


def drain(up: Uploader) -> None:
    with up.client() as client:
        while up.send_one(client):
            pass


def test_spool_budget_keeps_overrides_and_the_rate_limit_paces_the_bytes(tmp_path: Path, fleet_process):
    fleet = fleet_process(["dev-1"])
    store, ids = device_store(tmp_path)
    # room for two of the boards: 250 000 bytes
    up = uploader(store, tmp_path, fleet, disk_budget_mb=250_000 / (1 << 20), bandwidth_bps=100_000)
    # the kept images are near-threshold cases; Normal_33 is also overridden by an inspector
    override(store, ids["Normal_33.png"])
    up.scan()
    # the override first (N33, 102 kB); then the near-threshold boards in order: D02 (115 kB) fits, D25 (123 kB)
    # pushes out D02 (the oldest of the lower rank), N35 (95 kB) pushes out D25; the override stays
    state = {r["prediction_id"]: r["state"] for r in store.query("SELECT prediction_id, state FROM uploads")}
    assert state == {ids["Normal_33.png"]: "pending", ids["Defective_02.png"]: "dropped",
                     ids["Defective_25.png"]: "dropped", ids["Normal_35.png"]: "pending"}
    st = up.status()
    assert st["dropped"] == 2 and st["spool_bytes"] == SIZES["Normal_33.png"] + SIZES["Normal_35.png"] <= 250_000
    pending = {pid for pid, s in state.items() if s == "pending"}
    assert len(list((tmp_path / "spool").iterdir())) == 2  # dropped files are gone from the spool
    total = sum(r["size"] for r in store.query("SELECT size FROM uploads WHERE state = 'pending'"))
    t0 = time.monotonic()
    drain(up)
    elapsed = time.monotonic() - t0
    # the bucket starts full (one second's worth): the rest cannot go faster than the limit
    assert elapsed >= (total - 100_000) / 100_000
    print(f"uploaded {total} bytes in {elapsed:.2f} s at a limit of 100000 B/s: {total / elapsed:.0f} B/s")
    up.scan()
    assert up.status()["pending"] == 0 and up.status()["uploaded"] == len(pending)
    rows = {r["prediction_id"] for r in fleet.api("/api/images", device="dev-1")}
    assert rows == pending


def test_override_found_after_its_image_was_spooled_moves_it_up(tmp_path: Path, fleet_process):
    fleet = fleet_process(["dev-1"])
    store, ids = device_store(tmp_path)
    up = uploader(store, tmp_path, fleet, disk_budget_mb=1.0)
    up.scan()
    override(store, ids["Normal_35.png"])  # the newest image, overridden after it was spooled
    up.scan()
    first = store.query("SELECT prediction_id, reasons FROM uploads WHERE state = 'pending' "
                        "ORDER BY priority DESC, created_at LIMIT 1")[0]
    assert first["prediction_id"] == ids["Normal_35.png"] and "override" in first["reasons"]
    drain(up)
    row = {r["prediction_id"]: r for r in fleet.api("/api/images", device="dev-1")}[ids["Normal_35.png"]]
    assert set(row["reasons"].split(",")) == {"near_threshold", "override"}


def test_the_fleets_disk_budget_makes_the_device_keep_and_retry(tmp_path: Path, fleet_process):
    fleet = fleet_process(["dev-1"], images={"budget_mb": 0.15})  # about one board
    store, ids = device_store(tmp_path)
    up = uploader(store, tmp_path, fleet, retry_backoff_s=60)
    up.scan()
    drain(up)
    st = up.status()
    assert st["uploaded"] == 1 and st["retries"] >= 1 and "507" in (st["last_error"] or "")
    waiting = store.query("SELECT state, attempts, last_error FROM uploads WHERE state = 'pending'")
    assert len(waiting) == 3 and all(w["attempts"] >= 1 or w["last_error"] is None for w in waiting)
    assert len(fleet.api("/api/images", device="dev-1")) == 1
    assert all(Path(r["path"]).is_file() for r in store.query("SELECT path FROM uploads WHERE state = 'pending'"))


def put(fleet: FleetProcess, data: bytes, token: str | None, **params: Any) -> httpx.Response:
    digest = params.pop("sha", hashlib.sha256(data).hexdigest())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.put(f"{fleet.url}/api/images/{digest}", params={"prediction_id": "p-12345678", **params},
                     content=data, headers=headers, timeout=30)


def test_the_fleet_route_refuses_what_it_must(tmp_path: Path, fleet_process):
    fleet = fleet_process(["dev-1", "dev-2"], images={"max_image_mb": 0.11})
    from fleet.security import add_token

    inspector = add_token(fleet.tokens, "ann", ["inspector"])
    board = (PCB / "Normal_35.png").read_bytes()  # 95 kB, under the 0.11 MB cap
    dev1 = fleet.device_tokens["dev-1"]
    assert put(fleet, board, None).status_code == 401
    assert put(fleet, board, "forged").status_code == 401
    assert put(fleet, board, fleet.device_tokens["dev-2"], device="dev-1").status_code == 403
    wrong = put(fleet, board, dev1, sha="0" * 64)
    assert wrong.status_code == 422 and "sha256" in wrong.json()["error"]
    assert put(fleet, board, dev1, sha="not-a-sha").status_code == 422
    big = (PCB / "Defective_25.png").read_bytes()  # 123 kB
    assert put(fleet, big, dev1, prediction_id="p-big-000001").status_code == 413
    assert put(fleet, board, inspector).status_code == 400  # an inspector must name the device
    first = put(fleet, board, dev1)
    assert first.status_code == 201 and first.json()["device"] == "dev-1"
    again = put(fleet, board, dev1)
    assert again.status_code == 200 and again.json()["created"] is False  # idempotent
    other = put(fleet, (PCB / "Normal_33.png").read_bytes(), dev1)
    assert other.status_code == 409  # the first image of a prediction stands
    by_inspector = put(fleet, board, inspector, device="dev-2", prediction_id="p-ipad-0001")
    assert by_inspector.status_code == 201  # the same bytes: one blob, another (device, prediction)
    rows = fleet.api("/api/images")
    assert {(r["device"], r["prediction_id"]) for r in rows} == {("dev-1", "p-12345678"), ("dev-2", "p-ipad-0001")}
    assert {r["uploader"] for r in rows} == {"dev-1", "ann"}
    blobs = [p for p in (fleet.data / "images").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].read_bytes() == board  # content-addressed: stored once, no temp left


def test_throttle_paces_a_stream():
    t = Throttle(rate=200_000, burst=50_000, stop=threading.Event())
    t0 = time.monotonic()
    for _ in range(10):
        assert t.take(25_000)
    assert time.monotonic() - t0 >= (250_000 - 50_000) / 200_000
    stop = threading.Event()
    stop.set()
    assert Throttle(rate=1, burst=1, stop=stop).take(10) is False  # stopping ends the wait


def test_upload_over_https_checks_the_fleets_certificate(tmp_path: Path):
    """The fleet's API behind TLS (uvicorn with a certificate from fleet.tls.make_tls, the real app and store, no
    broker needed for uploads): the device uploads when `ca_file` is the CA that signed it, and refuses to talk to it
    without that CA (no upload, the TLS failure reported and retried)."""
    import uvicorn

    from fleet.api import create_app
    from fleet.config import FleetConfig
    from fleet.security import add_token
    from fleet.service import Fleet
    from fleet.tls import make_tls
    from tests.conftest import free_port

    tls = make_tls(tmp_path / "tls", "localhost")
    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "dev-1", ["device"], device="dev-1")
    port = free_port()
    fleet = Fleet(FleetConfig(data_dir=tmp_path / "fleet", tokens_file=tokens, http_port=port))
    server = uvicorn.Server(uvicorn.Config(create_app(fleet), host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(tls["cert"]), ssl_keyfile=str(tls["key"])))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the TLS server did not start"
            time.sleep(0.05)
        for ca, expect in ((None, 0), (tls["ca"], 1)):
            store, _ = device_store(tmp_path / f"dev-{expect}")
            config = UploadsConfig.model_validate({"url": f"https://127.0.0.1:{port}", "ca_file": ca,
                                                   "spool_dir": str(tmp_path / f"spool-{expect}")})
            up = Uploader(config, store, "dev-1", threading.Event(), token=token)
            up.scan()
            with up.client() as client:
                assert up.send_one(client)  # one attempt
            st = up.status()
            assert st["uploaded"] == expect
            if not expect:
                assert st["retries"] == 1 and "CERTIFICATE_VERIFY_FAILED" in (st["last_error"] or "")
    finally:
        server.should_exit = True
        thread.join(10)
    assert len(fleet.images.list("dev-1")) == 1
