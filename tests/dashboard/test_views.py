"""What the pages show, checked on the rendered HTML of a real Fleet (tests/dashboard/world.py): charts from 0
with the alert rules' limits drawn, the confidence histogram as bars, the latency table that adds up, the device
page, and the rollout form that starts from the newest release and warns before taking production back to
shadow."""

from __future__ import annotations

import re
from html import unescape

import pytest

from fleet.analytics.alerts import AlertRules
from fleet.dashboard.charts import histogram, line_chart, nice_top
from fleet.protocol import ReleaseSpec, Reported
from fleet.rollout import RolloutRequest
from tests.dashboard.test_pages import client_as, csrf_of
from tests.dashboard.world import add_device_detail


def _chart(html: str, chart_id: str) -> str:
    m = re.search(rf'<figure class="chart" id="{chart_id}">(.*?)</figure>', html, re.S)
    assert m, chart_id
    return m.group(1)


def _ticks(svg: str) -> list[tuple[float, str]]:
    """(height of the grid line, label) of each value tick, from the bottom."""
    lines = re.findall(r'<line class="grid" x1="[^"]+" x2="[^"]+" y1="([^"]+)"', svg)
    labels = re.findall(r'<text class="ytick"[^>]*>([^<]*)<', svg)
    return [(float(y), unescape(t)) for y, t in zip(lines, labels)]


@pytest.mark.parametrize("values,unit", [([0.0] * 5, "rate"), ([None, 0.0, 0.0], "rate"), ([0.0, 0.0], "count"),
                                         ([0.004, 0.0012, None, 0.0], "rate"), ([157.9, 173.7], "ms")])
def test_value_axes_start_at_zero_and_never_read_minus_zero(values, unit):
    c = line_chart("c", "t", [f"d{i}" for i in range(len(values))], values, unit)
    labels = [t.label for t in c.y_ticks]
    assert labels[0] in ("0%", "0.0%", "0.00%", "0", "0 ms") and not any(s.startswith("-") for s in labels)
    assert c.y_ticks[0].pos == c.bottom  # 0 is the floor of the plot
    # a 0 is drawn on the floor, not in the middle of the chart
    zeros = [p for p, v in zip(c.points, [v for v in values if v is not None]) if v == 0.0]
    assert all(p.y == c.bottom for p in zeros)
    known = [v for v in values if v is not None]
    top, _ = nice_top(max(known), unit == "count")
    assert all(c.top - 0.1 <= p.y <= c.bottom for p in c.points) and top >= max(known)


def test_the_limit_is_always_inside_the_chart():
    c = line_chart("c", "t", ["a", "b"], [0.0, 0.002], "rate", limit=0.01, limit_label="alert above 1%")
    assert c.hline is not None and c.top <= c.hline.pos < c.bottom and c.hline.label == "alert above 1%"
    # far above the data: the axis reaches past the limit instead of cutting it off
    assert float(c.y_ticks[-1].label.rstrip("%")) / 100 > 0.01


def test_histogram_bars_match_their_counts_and_mark_low_confidence():
    edges = [i / 10 for i in range(11)]
    counts = [0, 0, 1, 0, 3, 0, 4, 9, 20, 50]
    c = histogram("h", "t", counts, edges, 0.6, "low")
    assert [b.label for b in c.bars] == [str(n) for n in counts]
    tallest = max(c.bars, key=lambda b: b.h)
    assert tallest.label == "50" and all(b.h == 0 for b, n in zip(c.bars, counts) if n == 0)
    assert [b.warn for b in c.bars] == [True] * 6 + [False] * 4  # bins below 0.6
    assert c.vline is not None and c.bars[5].x + c.bars[5].w < c.vline.pos < c.bars[6].x


def test_pillars_charts_draw_the_rules_limits_and_the_histogram(world):
    fleet, tokens, _ = world
    html = client_as(fleet, tokens["viewer"]).get("/dashboard/pillars", params={"window": "30d"}).text
    rules = AlertRules()
    errors = _chart(html, "chart-errors")
    assert f"error_rate alert above {rules.error_rate.max_rate * 100:g}%" in errors
    ticks = _ticks(errors)
    assert ticks[0][1] in ("0%", "0.0%", "0.00%") and all(not t.startswith("-") for _, t in ticks)
    # the world has no errors: every point of the error rate lies on the 0 line
    assert set(re.findall(r'<circle cx="[^"]+" cy="([^"]+)"', errors)) == {str(ticks[0][0])}
    assert f"override_rate alert above {rules.override_rate.max_overall * 100:g}%" in _chart(html, "chart-overrides")
    # the latency and low-confidence limits need a release's baseline: none drawn for the whole fleet
    assert 'class="limit"' not in _chart(html, "chart-latency") and "Choose a release" in html
    hist = _chart(html, "chart-confidence")
    shown = [int(n) for n in re.findall(r'<text class="barlabel"[^>]*>(\d+)<', hist)]
    snap = fleet  # the histogram's bars are the snapshot's bins
    from fleet.dashboard.data import pillars
    assert shown == pillars(snap, window="30d")[0].distribution.histogram and sum(shown) > 0
    # with one release chosen, its baseline gives the latency and low-confidence limits
    one = client_as(fleet, tokens["viewer"]).get("/dashboard/pillars", params={"window": "30d",
                                                                                "release": "pcb-line@1"}).text
    assert "latency alert above" in _chart(one, "chart-latency") and "low_confidence_spike above" in _chart(
        one, "chart-lowconf") and "baseline (its first 7 days)" in one


def test_latency_columns_add_up_and_say_what_they_include(world):
    fleet, tokens, _ = world
    html = client_as(fleet, tokens["viewer"]).get("/dashboard/pillars", params={"window": "30d"}).text
    rows = {m.group(1): [unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", m.group(2))]
            for m in re.finditer(r'<tr class="[^"]*" id="lat-([\w-]+)">(.*?)</tr>', html, re.S)}
    assert list(rows) == ["decode", "verify", "total", "end-to-end"]
    per = {k: float(v[2]) for k, v in rows.items()}
    assert per["decode"] + per["verify"] == pytest.approx(per["end-to-end"], abs=0.11)
    assert per["verify"] == pytest.approx(per["total"], abs=0.06)
    assert per["end-to-end"] > per["decode"] and per["end-to-end"] > per["total"]
    assert "before any model" in rows["decode"][1] and "no decode" in rows["total"][1]
    preds = list(fleet.store.predictions())
    mean_decode = sum(p.latency_ms["decode"] for p in preds) / len(preds)
    assert per["decode"] == pytest.approx(mean_decode, abs=0.06)


def test_device_page_shows_config_versions_hardware_errors_predictions_alerts(world, bundles, tmp_path):
    from fleet.protocol import AlertRecord

    fleet, tokens, _ = world
    add_device_detail(fleet, bundles["pcb-aoi"], tmp_path)
    fleet.devices.report(Reported(device="dev-a", active="pcb-line@2", cached=["pcb-line@1", "pcb-line@2"],
                                  backends=["onnxruntime"], activation={"state": "committed"},
                                  last_error="activation of pcb-line@3 failed at check",
                                  hardware={"machine": "aarch64", "model": "Jetson Orin Nano"}))
    fleet.store.insert_records("alerts", [AlertRecord(device="dev-a", rule="queue_growing", state="raised",
                                                      severity="critical", value=12, threshold=0, message="grows")])
    c = client_as(fleet, tokens["viewer"])
    html = c.get("/dashboard/devices/dev-a").text
    text = re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))
    assert "Device dev-a" in text and "groups line-3" in text
    assert "desired release pcb-line@2 (shadow)" in text and "verify: pcb-aoi-v1.0 · default 0.4" in text
    assert "cached (ready for rollback) pcb-line@1, pcb-line@2" in text
    assert "model Jetson Orin Nano" in text and "backends onnxruntime" in text and "memory (daemon RSS) 212 MiB" in text
    cap = fleet.store.latest_events("capability")["dev-a"].detail
    assert f"{cap['bundle']} · {cap['configs'][0]['id']}: P95 {cap['configs'][0]['p95_ms']:.2f} ms" in text
    assert "activation of pcb-line@3 failed at check" in text and "corrupt or truncated image" in text
    assert 'id="device-alerts"' in html and "queue_growing" in text and "grows" in text
    shown = re.findall(r"<tr><td><time", html.split('id="recent-predictions"')[1].split("</table>")[0])
    assert len(shown) == min(20, len(list(fleet.store.predictions(device="dev-a", since=_day_ago()))))
    assert "queue depth, last 24 h" in text and "<polyline" in _chart(html, "chart-queue")
    devices = c.get("/dashboard/").text
    assert '<a href="/dashboard/devices/dev-a">dev-a</a>' in devices
    missing = c.get("/dashboard/devices/nope")
    assert missing.status_code == 404 and "no device 'nope'" in unescape(missing.text)


def _day_ago() -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) - timedelta(hours=24)).isoformat()


def test_rollout_form_starts_from_the_newest_release_and_warns_before_undoing_production(world):
    fleet, tokens, _ = world
    bid = fleet.registry.list()[0]["id"]
    prod = fleet.releases.create(ReleaseSpec(name="pcb-line", mode="production",
                                             stages=[{"role": "verify", "bundle": bid}]))
    c = client_as(fleet, tokens["admin"])
    page = c.get("/dashboard/rollouts").text
    options = re.findall(r'<option value="([^"]+)"( selected)?>', page.split('id="start-release"')[1])
    assert options[0] == (prod.ref, " selected") and [o for o, s in options if s] == [prod.ref]
    # the group runs the production release
    for rid in [r["id"] for r in fleet.rollouts.list() if r["state"] == "running"]:
        fleet.rollouts.rollback(rid)
    st = fleet.rollouts.start(RolloutRequest(release=prod.ref, group="line-3", waves=["100%"]))
    for dev in ("dev-a", "dev-b"):
        fleet.devices.report(Reported(device=dev, active=prod.ref, desired_revision=fleet.desired.revision(dev),
                                      activation={"state": "committed"}))
    fleet.rollouts.tick()
    assert fleet.rollouts.status(st["id"])["state"] == "completed"
    csrf = csrf_of(page)
    warn = c.post("/dashboard/rollouts/start", data={"release": "pcb-line@1", "group": "line-3", "waves": "100%",
                                                     "csrf": csrf}).text
    assert 'id="warning"' in warn
    text = unescape(re.sub(r"<[^>]+>", " ", warn))
    assert "pcb-line@1 is a shadow release" in text and f"dev-a ({prod.ref}), dev-b ({prod.ref})" in text
    assert "stop acting on flags" in text and 'id="question"' in warn
    assert fleet.rollouts.status(st["id"])["state"] == "completed"  # nothing started before the confirmation
    calm = c.post("/dashboard/rollouts/start", data={"release": "pcb-line@1", "group": "line-3", "waves": "100%",
                                                     "shadow_first": "1", "csrf": csrf}).text
    assert 'id="warning"' not in calm and "as candidate beside production" in calm
    same = c.post("/dashboard/rollouts/start", data={"release": prod.ref, "group": "line-3", "waves": "100%",
                                                     "csrf": csrf}).text
    assert 'id="warning"' not in same
