"""The local API's contract over real HTTP (a daemon in-process, its API served by uvicorn on a free port): status
codes, error bodies (the domain errors' `{error, type}`, the validation errors' `{"detail": [...]}` the review page
shows), the inspector login before validation, the session cookie, the review page's headers, the upload limit."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port
from tests.edge.conftest import INSPECTOR, INSPECTOR_TOKEN, PCB, inspectors_file, pcb_release
from tests.edge.test_daemon_inprocess import make_daemon


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, bundles, keys):
    tmp_path = tmp_path_factory.mktemp("local-api")
    port = free_port()
    d = make_daemon(tmp_path, keys, pcb_release(bundles), limits={"max_upload_mb": 2.0},
                    api={"enabled": True, "port": port,
                         "inspectors_file": str(inspectors_file(tmp_path, {"bo": INSPECTOR_TOKEN}))})
    d.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            r = client.post("/v1/infer", content=(PCB / "Defective_02.png").read_bytes(),
                            headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            yield client, r.json()["record"]
    finally:
        d.stop()


def test_probes_metrics_and_status(api) -> None:
    client, record = api
    assert client.get("/healthz").json() == {"ok": True}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "release": "pcb@1"}
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain; version=")
    assert "shadowline_frames_total" in m.text
    st = client.get("/v1/status").json()
    assert st["device"] == "dev-1" and st["release"] == "pcb@1" and st["frames"] >= 1
    assert record["decision"] in ("flag", "pass")


def test_unknown_routes_and_methods_answer_json(api) -> None:
    client, _ = api
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = client.delete("/v1/reviews", headers=INSPECTOR)
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


def test_domain_errors_carry_their_type(api) -> None:
    client, _ = api
    r = client.get("/v1/predictions/nope", headers=INSPECTOR)
    assert r.status_code == 404 and r.json()["type"] == "NotFound" and "nope" in r.json()["error"]
    r = client.post("/v1/infer", content=b"x" * 2_200_000, headers={"content-type": "image/png"})
    assert r.status_code == 422 and r.json()["type"] == "ImageError" and "MB" in r.json()["error"]
    r = client.post("/v1/infer", content=b"not an image", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "error" in r.json() and r.json()["record"]["decision"] == "error"


def test_login_comes_before_validation(api) -> None:
    client, _ = api
    bad = {"prediction_id": "x", "verdict": "looks fine"}
    assert client.post("/v1/reviews", json=bad).status_code == 401
    assert client.get("/v1/predictions", params={"limit": "many"}).status_code == 401
    r = client.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["type"] == "Unauthorized"


def test_validation_errors_answer_422_with_detail(api) -> None:
    client, record = api
    r = client.post("/v1/reviews", headers=INSPECTOR, json={"prediction_id": record["id"], "verdict": "looks fine"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(e["loc"], e["type"]) for e in detail] == [(["body", "verdict"], "literal_error")]
    assert detail[0]["input"] == "looks fine" and "confirm" in detail[0]["msg"]
    r = client.post("/v1/reviews", headers=INSPECTOR, json={"prediction_id": record["id"], "verdict": "confirm",
                                                            "inspector": "the-boss"})
    assert r.status_code == 422
    assert [(e["loc"], e["type"]) for e in r.json()["detail"]] == [(["body", "inspector"], "extra_forbidden")]
    r = client.post("/v1/reviews", headers={**INSPECTOR, "content-type": "application/json"}, content=b"{not json")
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert r.json()["detail"][0]["loc"] == ["body", 1]
    r = client.post("/v1/reviews", headers=INSPECTOR)
    assert r.status_code == 422
    assert [(e["loc"], e["type"]) for e in r.json()["detail"]] == [(["body"], "missing")]
    r = client.post("/v1/reviews", headers=INSPECTOR, json=["confirm"])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    r = client.get("/v1/predictions", headers=INSPECTOR, params={"limit": "many"})
    assert r.status_code == 422
    assert [(e["loc"], e["type"]) for e in r.json()["detail"]] == [(["query", "limit"], "int_parsing")]
    r = client.post("/v1/login", json={"token": ""})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "token"]


def test_queries_filter_and_cap(api) -> None:
    client, record = api
    got = client.get("/v1/predictions", headers=INSPECTOR, params={"limit": "1", "decision": record["decision"]})
    assert got.status_code == 200 and [p["id"] for p in got.json()] == [record["id"]]
    other = "pass" if record["decision"] == "flag" else "flag"
    assert client.get("/v1/predictions", headers=INSPECTOR, params={"decision": other}).json() == []
    assert client.get(f"/v1/predictions/{record['id']}", headers=INSPECTOR).json()["id"] == record["id"]
    assert client.get("/v1/reviews", headers=INSPECTOR, params={"prediction_id": "nope"}).json() == []


def test_session_cookie_login_and_logout(api) -> None:
    client, _ = api
    with httpx.Client(base_url=client.base_url, timeout=30) as s:
        r = s.post("/v1/login", json={"token": "wrong-" + "y" * 30})
        assert r.status_code == 401 and r.json()["type"] == "Unauthorized"
        r = s.post("/v1/login", json={"token": INSPECTOR_TOKEN}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = s.post("/v1/login", json={"token": INSPECTOR_TOKEN})
        assert r.status_code == 200 and r.json() == {"inspector": "bo"}
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie and "secure" not in cookie
        assert s.get("/v1/whoami").json() == {"inspector": "bo", "device": "dev-1"}
        r = s.post("/v1/logout")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert "shadowline_review=" in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
        assert s.get("/v1/whoami").status_code == 401


def test_review_page_and_kept_image(api) -> None:
    client, record = api
    page = client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/").text == page.text
    img = client.get(f"/v1/predictions/{record['id']}/image", headers=INSPECTOR)
    if record["image_kept"]:
        assert img.status_code == 200 and img.content == (PCB / "Defective_02.png").read_bytes()
    else:
        assert img.status_code == 404
    r = client.post("/v1/reviews", headers=INSPECTOR, json={"prediction_id": record["id"], "verdict": "bad_image"})
    assert r.status_code == 201 and r.json()["inspector"] == "bo" and r.json()["prediction_id"] == record["id"]
    assert [x["verdict"] for x in client.get("/v1/reviews", headers=INSPECTOR,
                                             params={"prediction_id": record["id"]}).json()] == ["bad_image"]



def test_no_openapi_document_or_explorer(api) -> None:
    """The device serves no OpenAPI document or API explorer (docs/daemon.md lists its routes)."""
    client, _ = api
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 404, path
