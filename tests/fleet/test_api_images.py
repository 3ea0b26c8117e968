"""The image routes on both store backends (SQLite and PostgreSQL, the `images` table of migration 0004): upload,
idempotent repeat, conflict, budget, listing and reading back what promote-data reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from fleet.service import Fleet
from tests.fleet.conftest import auth

PCB = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "images" / "pcb_winml"


def put(client: TestClient, token: str, data: bytes, pid: str, **params: str):
    return client.put(f"/api/images/{hashlib.sha256(data).hexdigest()}", content=data, headers=auth(token),
                      params={"prediction_id": pid, "reason": "override", "suffix": ".png", **params})


def test_upload_list_read_conflict_and_budget(client: TestClient, fleet: Fleet, tokens: dict[str, str]):
    a = (PCB / "Normal_33.png").read_bytes()
    b = (PCB / "Normal_35.png").read_bytes()
    r = put(client, tokens["device"], a, "pred-00000001")
    assert r.status_code == 201 and r.json()["device"] == "device-user" and r.json()["size"] == len(a)
    assert put(client, tokens["device"], a, "pred-00000001").status_code == 200  # the same again: idempotent
    assert put(client, tokens["device"], b, "pred-00000001").status_code == 409  # the first image stands
    listed = client.get("/api/images", headers=auth(tokens["viewer"]), params={"device": "device-user"}).json()
    assert [(x["prediction_id"], x["sha256"], x["reasons"]) for x in listed] == [
        ("pred-00000001", hashlib.sha256(a).hexdigest(), "override")]
    assert fleet.images.read("device-user", "pred-00000001") == a
    assert fleet.images.read("device-user", "pred-unknown1") is None
    blob = client.get(f"/api/images/{hashlib.sha256(a).hexdigest()}", headers=auth(tokens["viewer"]))
    assert blob.status_code == 200 and blob.content == a
    fleet.images.budget = fleet.images.used_bytes() + len(b) - 1  # one byte short of room for b
    full = put(client, tokens["device"], b, "pred-00000002")
    assert full.status_code == 507 and "full" in full.json()["error"]
    assert put(client, tokens["device"], a, "pred-00000003").status_code == 201  # known bytes take no room
    assert fleet.images.used_bytes() == len(a)
