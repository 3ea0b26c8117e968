"""Attacks on the device's review API and page (a real daemon process bound to loopback): no login, a forged or
revoked token, a verdict naming its own inspector, a cross-site form post, a verdict on a prediction that does not
exist, markup in a file name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.edge import conftest as _edge
from tests.edge.conftest import PCB, fill_inbox, inspectors_file, pcb_release, write_config

daemons = _edge.daemons  # the edge tests' fixture: real `shadowline edge run` processes

ANA = "ana-" + "k" * 40


def test_review_api_refuses_strangers(tmp_path: Path, bundles, keys, daemons, attack) -> None:
    inbox = tmp_path / "inbox"
    fill_inbox(inbox, PCB)
    evil = inbox / "<img src=x onerror=alert(1)>.png"
    evil.write_bytes((PCB / "Defective_02.png").read_bytes())
    cfg = write_config(tmp_path, keys, pcb_release(bundles),
                       api={"port": free_port(), "inspectors_file": str(inspectors_file(tmp_path, {"ana": ANA}))})
    d = daemons(cfg)
    d.wait_frames(5)
    url = d.url
    ana = {"Authorization": f"Bearer {ANA}"}
    queue = httpx.get(url + "/v1/review/queue", headers=ana, timeout=10).json()
    target = queue[0]
    routes = [("GET", "/v1/review/queue"), ("GET", "/v1/predictions"), ("GET", f"/v1/predictions/{target['id']}"),
              ("GET", f"/v1/predictions/{target['id']}/image"), ("GET", "/v1/reviews"), ("GET", "/v1/whoami"),
              ("POST", "/v1/reviews")]
    for method, path in routes:
        with attack(f"review API {method} {path.split('/')[2]} without a login"):
            r = httpx.request(method, url + path, json={"prediction_id": target["id"], "verdict": "confirm"},
                              timeout=10)
            assert r.status_code == 401, (path, r.status_code)
        with attack(f"review API {method} {path.split('/')[2]} with a forged token"):
            r = httpx.request(method, url + path, headers={"Authorization": "Bearer " + "f" * 44},
                              json={"prediction_id": target["id"], "verdict": "confirm"}, timeout=10)
            assert r.status_code == 401, (path, r.status_code)
    with attack("review API: a forged session cookie"):
        r = httpx.get(url + "/v1/review/queue", cookies={"shadowline_review": "guessed"}, timeout=10)
        assert r.status_code == 401
    with attack("review API: a verdict naming its own inspector"):
        r = httpx.post(url + "/v1/reviews", headers=ana, timeout=10,
                       json={"prediction_id": target["id"], "verdict": "confirm", "inspector": "the-boss"})
        assert r.status_code == 422
    with attack("review API: a cross-site form post with the inspector's cookie"):
        s = httpx.Client(base_url=url, timeout=10)
        assert s.post("/v1/login", json={"token": ANA}).status_code == 200
        r = s.post("/v1/reviews", json={"prediction_id": target["id"], "verdict": "confirm"},
                   headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        cookie = s.cookies.jar
        assert all(c.has_nonstandard_attr("HttpOnly") for c in cookie)
    with attack("review API: a verdict on a prediction that does not exist"):
        r = httpx.post(url + "/v1/reviews", headers=ana, json={"prediction_id": "nope", "verdict": "confirm"},
                       timeout=10)
        assert r.status_code == 404
    with attack("review page: markup in a file name"):
        page = httpx.get(url + "/review", headers=ana, timeout=10).text
        assert "<img src=x" not in page  # the page never carries records; the queue sets textContent
        names = [p["source"] for p in httpx.get(url + "/v1/review/queue", headers=ana, timeout=10).json()]
        assert any("<img" in n for n in names)
        assert 'li.append(dec, ` ${p.source' in page and "innerHTML = '';" in page  # text nodes, never markup
    with attack("review API: a token revoked on the device"):
        sid = httpx.post(url + "/v1/login", json={"token": ANA}, timeout=10).cookies["shadowline_review"]
        (tmp_path / "inspectors.json").write_text(json.dumps({"inspectors": [
            {"name": "bo", "sha256": hashlib.sha256(b"bo-token").hexdigest()}]}))
        assert httpx.get(url + "/v1/review/queue", cookies={"shadowline_review": sid}, timeout=10).status_code == 401
        assert httpx.get(url + "/v1/review/queue", headers=ana, timeout=10).status_code == 401
    assert httpx.get(url + "/v1/reviews", headers={"Authorization": "Bearer bo-token"}, timeout=10).json() == []
