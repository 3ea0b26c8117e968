"""Every dashboard page renders through Jinja2 with autoescape: hostile strings in every field a page shows (device
ids, groups, tags, reported hardware, errors, class labels, sources, release names, alert messages, silence and
audit reasons, capability records, metrics readings, refused records) come out as text. Each page is parsed: it
holds no element or attribute the data planted, and the planted text is there, shown as text. The fields are
written straight into the store where the fleet's own validation would refuse them: the pages must not rely on
it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from fleet.analytics.shadow import SignOff
from fleet.dashboard import data
from fleet.protocol import (
    AlertRecord,
    EventRecord,
    MetricsRecord,
    PredictionRecord,
    ReleaseSpec,
    Reported,
    ReviewRecord,
    now_iso,
)
from tests.dashboard.test_pages import client_as, csrf_of

SCRIPT = '<script>alert("x")</script>'
IMG = '"><img src=x onerror=alert(1)>'
QUOTE = "' onmouseover='alert(2)"
HOSTILE = f"{SCRIPT}{IMG}{QUOTE}"
EVIL_DEVICE = f"cam{IMG}"  # no "/": a path segment


class Page(HTMLParser):
    """The elements, attributes and text of a page, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def plant(fleet) -> dict[str, str]:
    """Hostile strings in every field a page shows. Returns ids the pages need."""
    now = datetime.now(timezone.utc)
    at = (now - timedelta(minutes=5)).isoformat()
    rep = Reported(device=EVIL_DEVICE, active=f"pcb-line@1{SCRIPT}", cached=[HOSTILE], backends=[HOSTILE],
                   activation={"state": "committed", "target": HOSTILE, "previous": HOSTILE}, last_error=HOSTILE,
                   hardware={HOSTILE: HOSTILE})
    fleet.store.upsert("devices", {"id": EVIL_DEVICE, "groups": json.dumps([f"line{IMG}"]),
                                   "tags": json.dumps({HOSTILE: HOSTILE}), "first_seen": at, "last_seen": at,
                                   "status": "online", "active": rep.active, "candidate": HOSTILE,
                                   "activation": rep.activation.model_dump_json(), "last_error": HOSTILE,
                                   "reported": rep.model_dump_json(by_alias=True)}, pk="id")
    # a label, a source, an error and a release name that carry markup, on the evil device and on a real one
    preds = [PredictionRecord(device=dev, created_at=at, source=f"folder:{HOSTILE}.png", release=f"pcb{QUOTE}",
                              revision=1, mode="shadow", decision=dec, top_label=None if dec == "error" else HOSTILE,
                              top_score=None if dec == "error" else 0.55, error=HOSTILE if dec == "error" else None,
                              latency_ms={"decode": 1.0, HOSTILE: 2.0, "total": 2.0})
             for dev in (EVIL_DEVICE, "dev-a") for dec in ("pass", "error")]
    fleet.store.insert_records("predictions", preds)
    fleet.store.insert_records("reviews", [ReviewRecord(
        prediction_id=preds[0].id, device=EVIL_DEVICE, created_at=at, inspector=HOSTILE, verdict="false_positive",
        override=True, model_decision="pass", release=preds[0].release, revision=1, top_label=HOSTILE,
        top_score=0.55)])
    fleet.store.insert_records("metrics", [MetricsRecord(device=EVIL_DEVICE, created_at=at, release=HOSTILE,
                                                         revision=1, window_s=60,
                                                         values={"queue_depth": 3, f"temp_c:{HOSTILE}": 40.0})])
    fleet.store.insert_records("events", [EventRecord(device=EVIL_DEVICE, kind="capability", detail={
        "bundle": HOSTILE, "measured_at": HOSTILE, "hardware": {HOSTILE: HOSTILE},
        "configs": [{"id": HOSTILE, "p95_ms": 3.0, "throughput_ips": 10.0}],
        "verdicts": {HOSTILE: {"status": HOSTILE}}})])
    fleet.store.count_refused(EVIL_DEVICE, HOSTILE, HOSTILE)
    alert = AlertRecord(device=EVIL_DEVICE, rule=f"error_rate{SCRIPT}", state="raised", severity="critical",
                        value=0.5, threshold=0.01, message=HOSTILE)
    fleet.store.insert_records("alerts", [alert])
    fleet.alerts.silence(HOSTILE, HOSTILE, timedelta(hours=1), device=EVIL_DEVICE, rule=f"x{IMG}")
    # release names are free text in the release spec
    bid = fleet.registry.list()[0]["id"]
    evil = fleet.releases.create(ReleaseSpec(name=f"rel{SCRIPT}", mode="production", note=HOSTILE,
                                             stages=[{"role": "verify", "bundle": bid}]))
    fleet.devices.update(EVIL_DEVICE, groups=[f"line{IMG}"])
    data.record_signoff(fleet, evil.ref, f"line{IMG}", SignOff(by=HOSTILE, note=HOSTILE, at=now_iso()))
    return {"alert": alert.id, "release": evil.ref}


def check(html: str, where: str, must_show: str | None = SCRIPT) -> None:
    page = Page(html)
    assert "script" not in page.tags and "img" not in page.tags, f"{where}: planted markup became elements"
    names = {k for k, _ in page.attrs}
    assert not any(n.startswith("on") for n in names), f"{where}: planted an event handler: {sorted(names)}"
    for raw in (SCRIPT, IMG):
        assert raw not in html, f"{where}: {raw!r} is in the page unescaped"
    if must_show:
        assert must_show in "".join(page.text) or any(must_show in (v or "") for _, v in page.attrs), \
            f"{where}: the planted text is not shown at all"


def test_hostile_strings_are_escaped_on_every_page(world):
    fleet, tokens, _ = world
    ids = plant(fleet)
    c = client_as(fleet, tokens["admin"])
    pages = {
        "devices": "/dashboard/",
        "device": f"/dashboard/devices/{quote(EVIL_DEVICE, safe='')}",
        "pillars": "/dashboard/pillars?window=24h",
        "pillars of the device": f"/dashboard/pillars?window=24h&device={quote(EVIL_DEVICE)}",
        "pillars of the release": f"/dashboard/pillars?window=24h&release={quote(ids['release'])}",
        "alerts": "/dashboard/alerts",
        "alert": f"/dashboard/alerts/{ids['alert']}",
        "rollouts": "/dashboard/rollouts",
        "shadow": f"/dashboard/shadow?release={quote(ids['release'])}&group={quote(f'line{IMG}')}&days=1",
        "unknown device": f"/dashboard/devices/{quote('x' + IMG, safe='')}",
        "unknown alert": f"/dashboard/alerts/{quote('x' + IMG, safe='')}",
        "login": f"/dashboard/login?next={quote(SCRIPT)}",
    }
    for name, path in pages.items():
        r = c.get(path)
        assert r.status_code in (200, 404), (name, r.status_code, r.text[:500])
        check(r.text, name, IMG if name.startswith("unknown") else SCRIPT)
    csrf = csrf_of(c.get("/dashboard/rollouts").text)
    confirms = {
        "start": ("/dashboard/rollouts/start", {"release": ids["release"], "group": f"line{IMG}", "waves": SCRIPT}),
        "silence": ("/dashboard/alerts/silence", {"device": SCRIPT, "rule": IMG, "reason": SCRIPT, "back": IMG}),
        "promote": ("/dashboard/shadow/promote", {"release": ids["release"], "group": SCRIPT, "reason": IMG}),
        "sign off": ("/dashboard/shadow/signoff", {"release": ids["release"], "group": SCRIPT, "note": IMG}),
        "unknown action": (f"/dashboard/alerts/{ids['alert']}/{quote(IMG, safe='')}", {}),
    }
    for name, (path, form) in confirms.items():
        r = c.post(path, data={**form, "csrf": csrf})
        assert r.status_code in (200, 404), (name, r.status_code)
        check(r.text, f"confirm {name}", IMG if name == "unknown action" else SCRIPT)
    # the action's outcome message (shown after the redirect) carries the hostile text back: still text
    r = c.post("/dashboard/alerts/silence", data={"device": SCRIPT, "rule": "*", "reason": IMG, "hours": "1",
                                                  "csrf": csrf, "confirm": "yes"})
    check(r.text, "message after silence", None)
    assert 'id="message"' in r.text


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/devices/dev-a", "/dashboard/pillars",
                                  "/dashboard/rollouts", "/dashboard/alerts", "/dashboard/shadow",
                                  "/dashboard/devices/nope", "/dashboard/login"])
def test_every_page_has_the_viewport_tag_and_no_raw_timestamps(world, path):
    """Phones get a page at their width, and times read as relative ("5 min ago") with the exact time on hover,
    never as ISO timestamps in the text."""
    import re

    fleet, tokens, _ = world
    c = client_as(fleet, tokens["admin"])
    fleet.store.insert_records("alerts", [AlertRecord(device="dev-a", rule="error_rate", state="raised",
                                                      severity="critical", value=0.1, threshold=0.01, message="x")])
    r = c.get(path)
    page = Page(r.text)
    assert r.text.count('<meta name="viewport" content="width=device-width,initial-scale=1">') == 1
    text = " ".join(page.text)
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text), re.findall(r"\S*\d{4}-\d\d-\d\dT\d\d:\d\d\S*", text)
    # every <time> has its exact UTC time on hover
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", m) for m in
               re.findall(r'<time datetime="[^"]+" title="([^"]+)"', r.text))
