"""The HTTP API: tokens and roles (401/403), OpenAPI, artifact downloads with Range and resume, path traversal,
the size cap, the mobile endpoints with a real Core ML package, and fuzzed request bodies."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.bundle import finish_bundle
from fleet.protocol import PredictionRecord, ReleaseSpec, StageSpec
from fleet.security import add_token
from runtime.bundle import read_manifest
from runtime.signing import load_private_key
from tests.fleet.conftest import auth

ADMIN_ROUTES = [("post", "/api/releases", {"name": "x", "stages": [{"role": "verify", "bundle": "b-v1.0"}]}),
                ("post", "/api/rollouts", {"release": "x@1", "group": "g"}),
                ("put", "/api/devices/dev-1", {"groups": ["g"]}),
                ("post", "/api/rollouts/abc/rollback", None)]


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES)
def test_admin_routes_need_a_token_and_the_admin_role(client, tokens, method, path, body):
    kw = {"json": body} if body is not None else {}
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert getattr(client, method)(path, headers=auth("not-a-token"), **kw).status_code == 401
    for role in ("viewer", "inspector", "device"):
        r = getattr(client, method)(path, headers=auth(tokens[role]), **kw)
        assert r.status_code == 403, (role, r.text)
        assert "lacks the role admin" in r.json()["error"]
    assert getattr(client, method)(path, headers=auth(tokens["admin"]), **kw).status_code not in (401, 403)


def test_read_routes_take_viewer_not_device(client, tokens):
    assert client.get("/api/devices", headers=auth(tokens["viewer"])).json() == []
    assert client.get("/api/devices", headers=auth(tokens["device"])).status_code == 403
    assert client.get("/api/devices").status_code == 401


def test_openapi_declares_bearer_auth(client):
    doc = client.get("/openapi.json").json()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    for path in ("/api/bundles", "/api/releases", "/api/rollouts", "/api/rollouts/{rid}/rollback",
                 "/artifacts/{name}", "/mobile/releases/{ref}/coreml", "/mobile/verdicts"):
        assert path in doc["paths"]
    assert client.get("/healthz").json() == {"status": "ok"}


def _tar(bundle: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(bundle, arcname=bundle.name)
    return buf.getvalue()


def test_bundle_upload_and_tampered_upload(client, tokens, bundles, tmp_path):
    r = client.post("/api/bundles", content=_tar(bundles["squeezenet"]), headers=auth(tokens["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == bundles["squeezenet"].name
    bad = tmp_path / bundles["pcb-aoi"].name
    shutil.copytree(bundles["pcb-aoi"], bad)
    (bad / "reference.npz").write_bytes(b"\0" + (bad / "reference.npz").read_bytes()[1:])
    r = client.post("/api/bundles", content=_tar(bad), headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "reference.npz" in r.json()["error"]
    r = client.post("/api/bundles", content=b"not a tar at all", headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "not a bundle" in r.json()["error"]
    assert [b["id"] for b in client.get("/api/bundles", headers=auth(tokens["viewer"])).json()] == \
        [bundles["squeezenet"].name]


def _target(fleet, device: str, bundle_id: str, name: str = "pcb") -> str:
    """A release of `bundle_id` sent to `device` (a device token downloads only what was sent to its device)."""
    spec = fleet.releases.create(ReleaseSpec(name=name, stages=[StageSpec(role="verify", bundle=bundle_id)]))
    fleet.desired.set(device, spec.ref)
    return spec.ref


def test_artifact_range_resume_and_traversal(client, fleet, tokens, bundles):
    info = fleet.registry.push(bundles["pcb-aoi"])
    url = f"/artifacts/{info['path']}"
    h = auth(tokens["device"])
    assert client.get(url).status_code == 401
    assert client.get(url, headers=auth(tokens["viewer"])).status_code == 403
    refused = client.get(url, headers=h)  # nothing was sent to this token's device yet
    assert refused.status_code == 403 and "no release sent to device 'device-user'" in refused.json()["error"]
    _target(fleet, "device-user", info["id"])
    full = client.get(url, headers=h)
    assert full.status_code == 200 and len(full.content) == info["size"]
    assert hashlib.sha256(full.content).hexdigest() == info["sha256"] == full.headers["x-content-sha256"]
    # an interrupted download resumes from where it stopped and the pieces hash to the artifact
    cut = info["size"] // 3
    part = client.get(url, headers={**h, "Range": f"bytes={cut}-"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes {cut}-{info['size'] - 1}/{info['size']}"
    assert hashlib.sha256(full.content[:cut] + part.content).hexdigest() == info["sha256"]
    tail = client.get(url, headers={**h, "Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == full.content[-100:]
    mid = client.get(url, headers={**h, "Range": "bytes=10-19"})
    assert mid.content == full.content[10:20]
    past = client.get(url, headers={**h, "Range": f"bytes={info['size']}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{info['size']}"
    # several ranges: one multipart/byteranges answer whose parts carry exactly the bytes asked for
    multi = client.get(url, headers={**h, "Range": "bytes=0-1,5-9"})
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    boundary = multi.headers["content-type"].split("boundary=")[1].encode()
    parts = [p for p in multi.content.split(b"--" + boundary) if p.strip(b"\r\n-")]
    got = {p.split(b"Content-Range: ")[1].split(b"\r\n")[0].decode(): p.split(b"\r\n\r\n", 1)[1][:-2]
           for p in parts}
    assert got == {f"bytes 0-1/{info['size']}": full.content[0:2], f"bytes 5-9/{info['size']}": full.content[5:10]}
    head = client.head(url, headers=h)
    assert head.status_code == 200 and head.headers["content-length"] == str(info["size"])
    for name in ("..%2Ffleet.db", "..%2F..%2Fetc%2Fpasswd", "fleet.db", "%2Fetc%2Fpasswd", "x.tar",
                 f"..%2Fartifacts%2F{info['path']}"):
        r = client.get(f"/artifacts/{name}", headers=h)
        assert r.status_code == 404, (name, r.status_code)


def test_download_never_exceeds_the_registered_size(client, fleet, tokens, bundles):
    info = fleet.registry.push(bundles["squeezenet"])
    path = fleet.artifacts_dir / info["path"]
    with open(path, "ab") as fh:  # the file on disk grew behind the registry's back
        fh.write(b"\0" * 4096)
    r = client.get(f"/artifacts/{info['path']}", headers=auth(tokens["inspector"]))
    assert r.status_code == 422 and "refusing to serve" in r.json()["error"]


def _coreml_bundle(src: Path, out: Path, private_key: Path) -> Path:
    """A copy of `src` as version x.9 with a real Core ML ML Program package under coreml/, signed again."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))])
    def prog(x):
        return mb.softmax(x=x, axis=-1, name="probs")

    staging = out / "staging"
    shutil.copytree(src, staging)
    (staging / "manifest.json").unlink()
    (staging / "manifest.sig").unlink()
    ct.convert(prog, convert_to="mlprogram").save(str(staging / "coreml" / "model.mlpackage"))
    m = read_manifest(src)
    m = m.model_copy(update={"version": m.version.split(".")[0] + ".9"})
    return finish_bundle(staging, m, out / m.bundle_id, load_private_key(private_key))[0]


def test_mobile_coreml_and_verdicts(client, fleet, tokens, bundles, keys, tmp_path):
    b = _coreml_bundle(bundles["pcb-aoi"], tmp_path, keys["private"])
    info = fleet.registry.push(b)
    assert info["coreml"] == f"{info['id']}.coreml.zip"
    spec = {"name": "pcb", "mode": "shadow", "stages": [{"role": "verify", "bundle": info["id"]}]}
    client.post("/api/releases", json=spec, headers=auth(tokens["admin"])).raise_for_status()
    assert client.get("/mobile/releases/pcb@1/coreml", headers=auth(tokens["viewer"])).status_code == 403
    r = client.get("/mobile/releases/pcb@1/coreml", headers=auth(tokens["inspector"]))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["bundle"] == info["id"] and doc["url"].endswith(info["coreml"])
    z = client.get(f"/artifacts/{info['coreml']}", headers=auth(tokens["inspector"]))
    assert hashlib.sha256(z.content).hexdigest() == doc["sha256"] and len(z.content) == doc["size"]
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        names = zf.namelist()
    assert "model.mlpackage/Manifest.json" in names
    # the same package always zips to the same bytes
    assert fleet.registry.get(info["id"])["coreml_sha256"] == doc["sha256"]
    assert client.get("/mobile/releases/pcb@1/coreml?stage=screen",
                      headers=auth(tokens["inspector"])).status_code == 404
    # the iPad records what it predicted (its device token), then the inspector's verdict names that prediction
    ipad = add_token(Path(tokens["file"]), "ipad-7", ["device"])
    pred = PredictionRecord(id="p-1", device="ipad-7", source="camera:roll#1", release="pcb", revision=1,
                            mode="shadow", decision="flag", flagged=[("Defective", 0.9)], top_label="Defective",
                            top_score=0.9).model_dump(mode="json")
    stored = client.post("/mobile/predictions", json={"records": [pred]}, headers=auth(ipad))
    assert stored.status_code == 200 and stored.json()["stored"] == 1, stored.text
    verdict = {"id": "5b0e7c7e-aaaa-4bbb-8ccc-000000000001", "prediction_id": "p-1", "device": "ipad-7",
               "verdict": "false_positive"}
    r1 = client.post("/mobile/verdicts", json=verdict, headers=auth(tokens["inspector"]))
    r2 = client.post("/mobile/verdicts", json=verdict, headers=auth(tokens["inspector"]))
    assert r1.json() == {"id": verdict["id"], "stored": True, "override": True} and r2.json()["stored"] is False
    reviews = list(fleet.store.reviews(release="pcb@1"))
    assert len(reviews) == 1 and reviews[0].inspector == "inspector-user" and reviews[0].override
    assert reviews[0].model_decision == "flag" and reviews[0].top_label == "Defective"  # from the prediction
    assert client.post("/mobile/verdicts", json=verdict).status_code == 401
    bad = client.post("/mobile/verdicts", json={**verdict, "verdict": "maybe"}, headers=auth(tokens["inspector"]))
    assert bad.status_code == 422


def test_mobile_without_coreml_says_so(client, fleet, tokens, bundles):
    info = fleet.registry.push(bundles["squeezenet"])
    client.post("/api/releases", json={"name": "sq", "stages": [{"role": "verify", "bundle": info["id"]}]},
                headers=auth(tokens["admin"])).raise_for_status()
    r = client.get("/mobile/releases/sq/coreml", headers=auth(tokens["inspector"]))
    assert r.status_code == 404 and "no Core ML package" in r.json()["error"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, route=st.sampled_from(["/api/releases", "/api/rollouts", "/mobile/verdicts",
                                                "/api/releases/x@1/thresholds"]))
def test_fuzzed_bodies_get_4xx_never_500(client, tokens, body, route):
    r = client.post(route, json=body, headers=auth(tokens["admin"]))
    assert 400 <= r.status_code < 500, (route, body, r.status_code, r.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), rng=st.text(max_size=30))
def test_fuzzed_uploads_and_ranges(client, tokens, raw, rng):
    r = client.post("/api/bundles", content=raw, headers=auth(tokens["admin"]))
    assert 400 <= r.status_code < 500, r.text
    r = client.get("/artifacts/whatever.tar", headers={**auth(tokens["inspector"]), "Range": rng.encode("ascii", "replace").decode()})
    assert r.status_code == 404


def test_dashboard_router_is_included(client):
    from fleet.dashboard import router

    gets = [r.path for r in router.routes if "GET" in getattr(r, "methods", ()) and "{" not in r.path]
    assert gets
    for path in gets:  # answered (possibly 401/403/422), not 404: the route is mounted
        assert client.get(path, follow_redirects=False).status_code != 404, path


def test_api_docs_are_self_hosted(client):
    """/docs and /redoc load their scripts from the fleet itself: they work on a plant network with no internet."""
    import re

    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        srcs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert srcs and all(s.startswith("/") for s in srcs), srcs  # nothing from another host
        assert f"/docs-assets/{asset}" in srcs
        js = client.get(f"/docs-assets/{asset}")
        assert js.status_code == 200 and len(js.content) > 100_000
    assert "fonts.googleapis" not in client.get("/redoc").text
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "Shadowline fleet"
