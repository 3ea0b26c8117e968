"""HTTP attacks on the fleet API: every protected operation without a token, with an unknown one and with one of
the wrong role; a 300 MB body without a token against a real `fleet serve` process (refused before it is read,
the process's peak memory grows by at most 20 MB); oversized bodies with a token (by Content-Length and chunked);
path traversal on artifacts; a device token reaching for another device's artifact or inspectors; forged verdicts
and predictions over the mobile routes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleet.http_guard import _api_routes, _roles_of
from fleet.protocol import PredictionRecord, ReleaseSpec, StageSpec
from fleet.security import add_token
from tests.conftest import free_port
from tests.fleet.conftest import auth


def _concrete(path: str) -> str:
    return (path.replace("{ref}", "x@1").replace("{rid}", "r1").replace("{device}", "cam-a")
            .replace("{name}", "x.tar").replace("{action}", "halt").replace("{kind}", "x").replace("{id}", "x")
            .replace("{rule}", "x").replace("{alert_id}", "x"))


def test_every_protected_operation_refuses_missing_unknown_and_wrong_tokens(client, tokens, attack):
    ops = [(path, m, _roles_of(r)) for path, r in _api_routes(client.app.router.routes)
           for m in sorted(r.methods or ()) if _roles_of(r) is not None and m != "HEAD"]
    assert len(ops) >= 20, ops
    for path, method, roles in ops:
        url = _concrete(path)
        body = {"content": b"{}" * 10} if method in ("POST", "PUT") else {}
        with attack(f"{method} {path} without a token"):
            r = client.request(method, url, **body)
            assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer", (url, r.status_code)
        with attack(f"{method} {path} with an unknown token"):
            r = client.request(method, url, headers=auth("forged-" + "x" * 40), **body)
            assert r.status_code == 401, (url, r.status_code)
        wrong = next(w for w in ("viewer", "device", "inspector") if w not in roles)
        with attack(f"{method} {path} with a {wrong} token"):
            r = client.request(method, url, headers=auth(tokens[wrong]), **body)
            assert r.status_code == 403, (url, wrong, roles, r.status_code, r.text)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _rss_peak(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux: `5` to /proc/PID/clear_refs) and return it, so the
    peak after a request is that request's, not hidden under an earlier higher peak (startup, a previous case)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def _send_body(port: int, path: str, headers: dict[str, str], size: int, chunked: bool) -> tuple[int, float, int]:
    """Stream `size` bytes to the server as one request; returns (status, seconds to the answer, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    t0 = time.perf_counter()
    s.sendall(head.encode())
    chunk, sent = b"[" + b"1," * ((1 << 20) // 2 - 1) + b"1", 0
    try:
        while sent < size:
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server answered and closed: what we want
    answer = b""
    try:
        while b"\r\n" not in answer:
            got = s.recv(4096)
            if not got:
                break
            answer += got
    except OSError:
        pass
    elapsed = time.perf_counter() - t0
    s.close()
    status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1") else 0
    return status, elapsed, sent


@pytest.fixture
def served(tmp_path, keys, tokens):
    """A real `shadowline fleet serve` process (embedded broker) on free ports."""
    http_port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--data-dir",
                             str(tmp_path / "data"), "--embedded-broker-port", str(free_port()), "--port",
                             str(http_port), "--trust-store", str(keys["trust"]), "--tokens-file", tokens["file"]],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("fleet serve did not get ready: " + (tmp_path / "serve.log").read_text()[-2000:])
    yield proc, http_port
    proc.terminate()
    proc.wait(20)


def test_300_mb_body_without_a_token_is_refused_before_it_is_read(served, tokens, attack):
    proc, port = served
    results = {}
    for path, headers, chunked, expect in (("/api/releases", {}, False, 401),
                                           ("/api/releases", {}, True, 401),
                                           ("/mobile/verdicts", {"Authorization": "Bearer nope"}, False, 401),
                                           ("/api/releases", auth(tokens["admin"]), False, 413),
                                           ("/api/releases", auth(tokens["admin"]), True, 413),
                                           ("/api/bundles", auth(tokens["viewer"]), False, 403)):
        name = f"300 MB {'chunked ' if chunked else ''}body to {path} ({expect} expected)"
        with attack(name):
            before = _reset_peak(proc.pid)
            status, seconds, sent = _send_body(port, path, headers, 300 << 20, chunked)
            growth = _rss_peak(proc.pid) - before
            results[name] = {"status": status, "seconds": round(seconds, 3), "sent_mb": round(sent / 2**20, 1),
                             "peak_rss_growth_mb": round(growth / 2**20, 2)}
            assert status == expect, results[name]
            assert growth <= 20 << 20, results[name]
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    print("\n" + json.dumps(results, indent=1), f"\nload average {os.getloadavg()}")


def test_traversal_and_other_devices_artifacts(client, fleet, tokens, bundles, attack):
    info = fleet.registry.push(bundles["pcb-aoi"])
    other = fleet.registry.push(bundles["squeezenet"])
    fleet.releases.create(ReleaseSpec(name="pcb", stages=[StageSpec(role="verify", bundle=info["id"])]))
    fleet.releases.create(ReleaseSpec(name="sq", stages=[StageSpec(role="verify", bundle=other["id"])]))
    fleet.desired.set("cam-a", "pcb@1")
    fleet.desired.set("cam-b", "sq@1")
    cam_a = add_token(Path(tokens["file"]), "cam-a", ["device"])
    assert client.get(f"/artifacts/{info['path']}", headers=auth(cam_a)).status_code == 200
    for name in ("..%2Ffleet.db", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "fleet.db", "..", "x.tar%00.png",
                 f"..%2Fartifacts%2F{info['path']}", f"{info['path']}%2F..%2F..%2Ffleet.db"):
        with attack(f"artifact path traversal {name}"):
            r = client.get(f"/artifacts/{name}", headers=auth(tokens["inspector"]))
            assert r.status_code == 404, (name, r.status_code)
    with attack("a device token downloads another device's bundle"):
        r = client.get(f"/artifacts/{other['path']}", headers=auth(cam_a))
        assert r.status_code == 403 and "cam-a" in r.json()["error"]
    with attack("a device token reads another device's inspector list"):
        r = client.get("/api/devices/cam-b/inspectors", headers=auth(cam_a))
        assert r.status_code == 403
    with attack("a device token posts predictions in another device's name"):
        rec = PredictionRecord(device="cam-b", source="x", release="pcb", revision=1, mode="shadow",
                               decision="pass").model_dump(mode="json")
        r = client.post("/mobile/predictions", json={"records": [rec]}, headers=auth(cam_a))
        assert r.status_code == 200 and r.json()["stored"] == 0
        assert r.json()["refused"][0]["reason"] == "device_mismatch"
        assert not fleet.store.predictions_by_id("cam-b", [rec["id"]])


def test_forged_verdicts_over_http(client, fleet, tokens, attack):
    ipad = add_token(Path(tokens["file"]), "ipad-1", ["device"])
    pred = PredictionRecord(id="ipad-p1", device="ipad-1", source="camera#1", release="pcb", revision=1,
                            mode="shadow", decision="pass").model_dump(mode="json")
    assert client.post("/mobile/predictions", json={"records": [pred]}, headers=auth(ipad)).json()["stored"] == 1
    h = auth(tokens["inspector"])
    base = {"prediction_id": "ipad-p1", "device": "ipad-1", "verdict": "confirm"}
    cases = [("verdict on a prediction that does not exist", {**base, "prediction_id": "nope-1"}, 404),
             ("verdict naming an unknown device", {**base, "device": "ghost-9"}, 404),
             ("verdict claiming to be an override", {**base, "override": True}, 422),
             ("verdict naming its own inspector", {**base, "inspector": "the-boss"}, 422),
             ("verdict claiming the model's decision", {**base, "model_decision": "flag"}, 422),
             ("false positive on a frame the model passed", {**base, "verdict": "false_positive"}, 409),
             ("verdict with a prediction id of 5000 characters", {**base, "prediction_id": "p" * 5000}, 422),
             ("verdict body of 2 MB", {**base, "note": "x" * (2 << 20)}, 413)]
    for name, body, status in cases:
        with attack(name):
            r = client.post("/mobile/verdicts", json=body, headers=h)
            assert r.status_code == status, (name, r.status_code, r.text[:200])
            assert list(fleet.store.reviews()) == []
    with attack("an inspector token posting predictions"):
        r = client.post("/mobile/predictions", json={"records": [pred]}, headers=h)
        assert r.status_code == 403
    ok = client.post("/mobile/verdicts", json={**base, "verdict": "missed_defect", "defect_class": "Defective"},
                     headers=h)
    assert ok.status_code == 200 and ok.json()["override"] is True
    (rev,) = list(fleet.store.reviews())
    assert rev.inspector == "inspector-user" and rev.model_decision == "pass"
