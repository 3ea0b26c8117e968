"""The fleet's /metrics by the book: `promtool check metrics` accepts it, and its figures are the store's."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fleet.api import create_app

PROMTOOL = shutil.which("promtool")


def scrape(fleet, token: str) -> str:
    r = TestClient(create_app(fleet)).get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is installed by scripts/install.sh (Debian: prometheus)")
def test_promtool_check_metrics_accepts_the_fleet_endpoint(world):
    fleet, tokens, _ = world
    text = scrape(fleet, tokens["viewer"])
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (done.stdout, done.stderr)
    # the checker is strict enough to matter: the same text with a gauge named like a counter fails it
    bad = text + "# HELP shadowline_fleet_flags_1h_total Flags.\n# TYPE shadowline_fleet_flags_1h_total gauge\n" \
                 "shadowline_fleet_flags_1h_total 3\n"
    refused = subprocess.run([PROMTOOL, "check", "metrics"], input=bad.encode(), capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"non-counter metrics should not have \"_total\" suffix" in refused.stdout + refused.stderr


def test_no_windows_no_pseudo_devices_and_help_everywhere(world):
    fleet, tokens, _ = world
    text = scrape(fleet, tokens["viewer"])
    assert "_1h" not in text and 'device="fleet"' not in text and 'device="*"' not in text
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert helps == types and len(types) >= 20
    s = samples(text)
    [build] = s["shadowline_build_info"]
    assert build.value == 1 and build.labels["component"] == "fleet" and build.labels["version"]
    release = {(x.labels["device"], x.labels["release"], x.labels["role"], x.labels["mode"]) for x in
               s["shadowline_release_info"]}
    assert release == {(d["id"], d["active"], "active", "shadow") for d in fleet.devices.list() if d.get("active")}
    assert release  # the world's rollout committed a release on the devices


def test_figures_are_the_stores(world):
    fleet, tokens, _ = world
    s = samples(scrape(fleet, tokens["viewer"]))
    preds = list(fleet.store.predictions())
    revs = list(fleet.store.reviews())
    assert sum(x.value for x in s["shadowline_fleet_predictions_total"]) == len(preds)
    for dev in {p.device for p in preds}:
        mine = [p for p in preds if p.device == dev]
        flags = sum(x.value for x in s["shadowline_fleet_predictions_total"]
                    if x.labels["device"] == dev and x.labels["decision"] == "flag")
        assert flags == sum(p.decision == "flag" for p in mine)
        lat = {x.labels["le"]: x.value for x in s["shadowline_fleet_prediction_latency_seconds_bucket"]
               if x.labels["device"] == dev}
        totals = [p.latency_ms["total"] / 1000 for p in mine if p.decision != "error"]
        assert lat["+Inf"] == len(totals) and lat["0.025"] == sum(t <= 0.025 for t in totals)
        [lsum] = [x.value for x in s["shadowline_fleet_prediction_latency_seconds_sum"] if x.labels["device"] == dev]
        assert lsum == pytest.approx(sum(totals))
        conf = {x.labels["le"]: x.value for x in s["shadowline_fleet_prediction_confidence_bucket"]
                if x.labels["device"] == dev}
        assert conf["0.5"] == sum(p.top_score <= 0.5 for p in mine if p.decision != "error")
        [low] = [x.value for x in s["shadowline_fleet_low_confidence_predictions_total"] if x.labels["device"] == dev]
        assert low == sum(p.top_score < 0.6 for p in mine if p.decision != "error")
    overrides = sum(x.value for x in s["shadowline_fleet_reviews_total"] if x.labels["override"] == "true")
    assert overrides == sum(r.override for r in revs) > 0
    assert {x.labels["kind"]: x.value for x in s["shadowline_fleet_records_total"]}["reviews"] == len(revs)
    assert [x.value for x in s["shadowline_fleet_store_up"]] == [1.0]


def test_a_failing_store_is_reported_not_a_500(world):
    fleet, tokens, _ = world
    # the database file becomes unreachable (a lost mount, a path now taken by something else): SQLAlchemy's
    # pool opens new connections after close(), and every one of them fails
    db = fleet.store.path
    fleet.store.close()
    db.rename(db.with_name(db.name + ".gone"))
    db.mkdir()
    s = samples(scrape(fleet, tokens["viewer"]))
    assert [x.value for x in s["shadowline_fleet_store_up"]] == [0.0]
    assert "shadowline_build_info" in s and "shadowline_fleet_predictions_total" not in s
