"""Dashboard pages and controls over a real Fleet (SQLite store) through the ASGI app, without a browser."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.service import Fleet


def client_as(fleet: Fleet, token: str) -> TestClient:
    c = TestClient(create_app(fleet))
    r = c.post("/dashboard/login", data={"token": token, "next": "/dashboard/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/"
    return c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_login_required_and_bad_token(world):
    fleet, tokens, _ = world
    c = TestClient(create_app(fleet))
    r = c.get("/dashboard/pillars", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?next=/dashboard/pillars")
    r = c.post("/dashboard/login", data={"token": "nope"}, follow_redirects=False)
    assert "failed=1" in r.headers["location"]
    r = c.post("/dashboard/login", data={"token": tokens["inspector"]}, follow_redirects=False)
    assert "failed=1" in r.headers["location"]  # inspectors use the mobile API, not the dashboard
    assert c.get("/metrics").status_code == 401


def test_pages_show_the_store(world):
    fleet, tokens, _ = world
    c = client_as(fleet, tokens["viewer"])
    devices = c.get("/dashboard/").text
    assert "dev-a" in devices and "dev-b" in devices and "pcb-line@1" in devices
    pillars = c.get("/dashboard/pillars", params={"window": "30d"}).text
    n = len(list(fleet.store.predictions()))
    assert f"<p>{n} predictions" in pillars and pillars.count("<svg") == 7  # 6 trends and the histogram
    shadow = c.get("/dashboard/shadow", params={"release": "pcb-line@1", "group": "line-3", "days": 30}).text
    assert 'id="verdict"' in shadow and "NO-GO" in shadow  # no sign-off yet
    md = c.get("/dashboard/shadow/report", params={"release": "pcb-line@1", "group": "line-3", "days": 30,
                                                   "format": "md"})
    assert md.text.startswith("# Shadow report: pcb-line@1")
    # a viewer sees no controls and cannot use them
    assert 'id="promote"' not in shadow
    # even with its own session's valid CSRF token, a viewer's action is refused for the role
    (viewer_session,) = c.app.state.dashboard_sessions.values()
    r = c.post("/dashboard/shadow/promote", data={"release": "pcb-line@1", "group": "line-3",
                                                   "csrf": viewer_session.csrf, "confirm": "yes"})
    assert r.status_code == 403 and "not an admin" in r.text
    assert len(fleet.releases.list()) == 2


def test_metrics_need_a_token(world):
    fleet, tokens, _ = world
    c = TestClient(create_app(fleet))
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    text = c.get("/metrics", headers={"Authorization": f"Bearer {tokens['viewer']}"}).text
    assert re.search(r'shadowline_fleet_devices\{status="online"\} 2\.0\b', text)


def test_rollback_is_confirmed_then_takes_effect(world):
    fleet, tokens, published = world
    c = client_as(fleet, tokens["admin"])
    rid = fleet.rollouts.list()[-1]["id"]
    page = c.get("/dashboard/rollouts").text
    assert f'id="rollback-{rid}"' in page
    csrf = csrf_of(page)
    before = len(published)
    first = c.post(f"/dashboard/rollouts/{rid}/rollback", data={"csrf": csrf})
    assert 'id="question"' in first.text and fleet.rollouts.status(rid)["state"] != "rolled_back"
    assert len(published) == before  # nothing happened before the confirmation
    assert c.post(f"/dashboard/rollouts/{rid}/rollback", data={"csrf": "forged", "confirm": "yes"}).status_code == 403
    done = c.post(f"/dashboard/rollouts/{rid}/rollback", data={"csrf": csrf, "confirm": "yes"})
    assert "rolled_back" in done.text and fleet.rollouts.status(rid)["state"] == "rolled_back"
    assert fleet.desired.current("dev-a")[0] == "pcb-line@1"


def test_promotion_refused_then_overridden_with_audit(world):
    fleet, tokens, _ = world
    c = client_as(fleet, tokens["admin"])
    rid = fleet.rollouts.list()[-1]["id"]
    fleet.rollouts.rollback(rid)  # the group must be free for the production rollout
    q = {"release": "pcb-line@1", "group": "line-3", "days": 30}
    csrf = csrf_of(c.get("/dashboard/shadow", params=q).text)
    refused = c.post("/dashboard/shadow/promote", data={**q, "csrf": csrf, "confirm": "yes"})
    assert "promotion refused" in refused.text
    ok = c.post("/dashboard/shadow/promote", data={**q, "csrf": csrf, "confirm": "yes",
                                                   "reason": "weekend line idle; QA accepted the risk"})
    assert "promoted: pcb-line@3" in ok.text and "admin override" in ok.text
    assert fleet.releases.get("pcb-line@3").mode == "production"
    assert [a.outcome for a in __import__("fleet.dashboard.data", fromlist=["x"]).audit_log(fleet).entries()] == [
        "refused", "overridden"]


def test_grafana_dashboard_queries_metrics_the_service_exports(world):
    import json as _json

    import yaml

    from tests.conftest import ROOT
    fleet, tokens, _ = world
    text = TestClient(create_app(fleet)).get("/metrics", headers={"Authorization": f"Bearer {tokens['viewer']}"}).text
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    series = exported | {f"{n}_{s}" for n in exported for s in ("total", "bucket", "count", "sum")}
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "shadowline.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    dash = _json.loads((ROOT / "deploy" / "grafana" / "shadowline-fleet.json").read_text())
    assert "__inputs" not in dash  # the datasource variable is what every panel uses
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"shadowline[a-z_:0-9]*", e)}
    assert used and used <= series | recorded, used - series - recorded
    assert all(p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"} for p in dash["panels"]
               if p["type"] != "row")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_acknowledge_silence_resolve_from_the_pages(world):
    from fleet.protocol import AlertRecord

    fleet, tokens, _ = world
    crit = AlertRecord(device="dev-a", rule="error_rate", state="raised", severity="critical", value=0.1,
                       threshold=0.01, message="error rate 10.00% over 30 predictions (limit 1.00%)")
    warn = AlertRecord(device="*", rule="override_rate", state="raised", severity="warning", value=0.2,
                       threshold=0.15, message="override rate 20.0% of 40 reviews (limit 15%)")
    fleet.store.insert_records("alerts", [warn, crit])
    c = client_as(fleet, tokens["admin"])
    page = c.get("/dashboard/alerts").text
    rows = re.findall(r'<tr><td><span class="sev[^"]*">(\w+)</span></td><td[^>]*><a href="/dashboard/alerts/([^"]+)"', page)
    assert rows[:2] == [("critical", crit.id), ("warning", warn.id)]  # most urgent first
    assert "just now</time>" in page and "docs/runbooks.md#error-rate" in page
    csrf = csrf_of(page)
    first = c.post(f"/dashboard/alerts/{crit.id}/ack", data={"csrf": csrf})
    assert 'id="question"' in first.text and fleet.alerts.get(crit.id).ack is None  # confirmation first
    done = c.post(f"/dashboard/alerts/{crit.id}/ack", data={"csrf": csrf, "confirm": "yes"})
    assert f"alert {crit.id}: acknowledged" in done.text and fleet.alerts.get(crit.id).ack.by == "admin-user"
    c.post("/dashboard/alerts/silence", data={"csrf": csrf, "confirm": "yes", "device": "*", "rule": "override_rate",
                                               "hours": "2", "reason": "retraining", "back": warn.id})
    assert fleet.alerts.get(warn.id).status == "silenced"
    bad = c.post("/dashboard/alerts/silence", data={"csrf": csrf, "confirm": "yes", "hours": "2", "reason": " "})
    assert "not silenced: a silence needs a reason" in bad.text
    c.post(f"/dashboard/alerts/{warn.id}/resolve", data={"csrf": csrf, "confirm": "yes", "note": "retrained"})
    assert fleet.alerts.get(warn.id).status == "resolved"
    page = c.get("/dashboard/alerts").text
    assert page.count("retraining") == 1  # the silence in force is listed
    history = page.split("History")[1]
    assert history.count(f"/dashboard/alerts/{warn.id}") == 1 and history.count(f"/dashboard/alerts/{crit.id}") == 1
    viewer = client_as(fleet, tokens["viewer"])
    assert 'id="ack-' not in viewer.get("/dashboard/alerts").text
    assert viewer.get(f"/dashboard/alerts/{crit.id}").status_code == 200
    assert viewer.get("/dashboard/alerts/nope").status_code == 404
