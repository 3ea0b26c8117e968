"""One dataset (predictions, verdicts, adjudications upholding and overturning overrides, unresolved disputes, a
bad image, errors), every surface: the API's pillars and shadow report, the dashboard's pillars and shadow pages,
/metrics, the Prometheus recording rules and the Grafana panels that divide its counters (evaluated by promtool on
what /metrics said), the CLI, the alert rules of the monitoring pass, the rollout gates and the promotion gate all
show the same figure, and that figure is the one worked out by hand in tests/fleet/figures_data.py.

The fleet runs as it does in production: a Fleet on a SQLite store behind a real uvicorn; the CLI runs as a
separate process; the dashboard is read over HTTP with a logged-in session."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.rollout import Gates, RolloutRequest
from fleet.service import Fleet
from tests.conftest import ROOT
from tests.fleet.conftest import auth
from tests.fleet.figures_data import DEVICES, EXPECTED, GROUP, REF, served_fleet


@pytest.fixture
def served(config, bundles) -> Iterator[tuple[Fleet, str]]:
    with served_fleet(config, bundles["pcb-aoi"]) as s:
        yield s


def _text(page: str) -> str:
    """The page's text: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (what PromQL's sum() would give)."""
    total, found = 0.0, False
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(m.group(2)), True
    assert found, f"no {name} {labels} in /metrics"
    return total


PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus" / "shadowline.rules.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "shadowline-fleet.json"
# the families the figures' PromQL divides (counters, and the case gauges the override rate reads)
FIGURE_FAMILIES = ("shadowline_fleet_predictions_total", "shadowline_fleet_group_predictions_total",
                   "shadowline_fleet_low_confidence_predictions_total", "shadowline_fleet_reviewed_cases",
                   "shadowline_fleet_overridden_cases", "shadowline_fleet_group_reviewed_cases",
                   "shadowline_fleet_group_overridden_cases")


def _panel(title: str) -> str:
    """A Grafana panel's query, with the dashboard's variables at "All" and its rate window at the hour the
    dataset spans."""
    panels = json.loads(GRAFANA.read_text())["panels"]
    flat = [q for p in panels for q in [p, *p.get("panels", [])]]
    (expr,) = [t["expr"] for p in flat if p.get("title") == title for t in p.get("targets", [])]
    return re.sub(r"\$\{?(device|group)\}?", ".*", expr.replace("$__rate_interval", "1h"))


def _promql_agrees(metrics: str, workdir: Path) -> None:
    """The shipped recording rules and Grafana panels, evaluated by promtool on series that grow over an hour from
    0 to what /metrics said (a rate ratio over that hour is then the ratio of the scraped values), give the figures
    of the dataset."""
    e = EXPECTED
    series = []
    for m in re.finditer(r"^(\w+)(\{[^}]*\})? (\S+)$", metrics, re.M):
        if m.group(1) in FIGURE_FAMILIES:
            series.append({"series": m.group(1) + (m.group(2) or ""), "values": f"0+{float(m.group(3)) / 60!r}x60"})
    group = {"group": GROUP, "release": REF}
    # by hand (figures_data.py): the devices alternate, so each has 20 predictions, 1 error, 19 scored, 5 of them
    # low-confidence (P0-P9 are predictions 12..21)
    want: dict[str, list[tuple[dict[str, str], float]]] = {
        "shadowline:slo_errors:ratio_rate1h": [(group, e["error_rate"])],
        "shadowline:slo_overrides:ratio_rate1d": [(group, e["override_rate"])],
        _panel("Error rate"): [({"device": d}, 1 / 20) for d in DEVICES],
        _panel("Low-confidence share (1 h)"): [({"device": d}, 5 / 19) for d in DEVICES],
        _panel("Class share (active release, 1 h)"): [({"class": c}, v) for c, v in e["class_share"].items()],
        _panel("Override rate (1 day)"): [({"release": REF}, e["override_rate"])]}

    # both sides rounded to a multiple of 2^-30 (exact in binary): a ratio of rates carries float noise in its
    # last digits
    step = 2.0 ** -30

    def sample(labels: dict[str, str], value: float) -> dict[str, object]:
        return {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                "value": math.floor(value / step + 0.5) * step}

    tests = [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": f"round({expr}, {step!r})", "eval_time": "60m", "exp_samples": [sample(lb, v) for lb, v in samples]}
        for expr, samples in want.items()]}]
    unit = workdir / "figures.test.yml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([PROMTOOL or "promtool", "test", "rules", str(unit)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_surface_shows_the_same_figures(served, tokens, tmp_path):
    fleet, url = served
    e = EXPECTED
    viewer = auth(tokens["viewer"])
    http = httpx.Client(base_url=url, timeout=30)

    # -- the API: pillars over the last hour, the shadow report of the last day
    snap = http.get("/api/pillars", params={"window": "1h"}, headers=viewer).json()["snapshot"]
    h, d, o, i = snap["health"], snap["distribution"], snap["overrides"], snap["impact"]
    api = {"error_rate": h["error_rate"], "latency_p95_ms": h["latency_ms"]["total"]["p95"],
           "class_share": d["share"], "low_confidence_share": d["low_confidence_share"],
           "override_rate": o["overall"]["rate"], "reviewed": o["overall"]["reviews"],
           "overrides": o["overall"]["overrides"], "unresolved": o["unresolved"], "missed_defects": i["missed_defects"],
           "model_only_catches": i["model_caught_inspector_missed"]}
    assert api == {k: pytest.approx(e[k]) for k in api}
    q = {"release": REF, "group": GROUP, "days": 1}
    rep = http.get("/api/shadow/report", params=q, headers=viewer).json()
    assert rep["override_rate"] == {"reviews": e["reviewed"], "overrides": e["overrides"], "rate": e["override_rate"]}
    for k in ("reviewed", "disputed", "adjudicated", "unresolved", "missed_defects", "model_only_catches",
              "model_false_positives", "defects"):
        assert rep[k] == e[k], k
    for k in ("fp_rate", "model_recall", "inspector_recall"):
        assert rep[k] == pytest.approx(e[k]), k
    failed = [c["name"] for c in rep["checks"] if not c["passed"]]
    assert failed == ["days", "recall", "fp_rate", "unresolved", "sign_off"] and rep["go"] is False

    # -- /metrics (by the book: cumulative counts, no windows; the PromQL of the rules and Grafana divides them)
    metrics = http.get("/metrics", headers=viewer).text
    preds = _sum(metrics, "shadowline_fleet_predictions_total")
    scored = preds - _sum(metrics, "shadowline_fleet_predictions_total", decision="error")
    assert preds == e["predictions"]
    assert _sum(metrics, "shadowline_fleet_predictions_total", decision="error") / preds == e["error_rate"]
    assert _sum(metrics, "shadowline_fleet_predictions_total", **{"class": "Defective"}) / scored == pytest.approx(
        e["class_share"]["Defective"])
    assert _sum(metrics, "shadowline_fleet_low_confidence_predictions_total") / scored == pytest.approx(
        e["low_confidence_share"])
    # the override rate's cases, not verdict records (42 of them, 14 overriding: 33% if they were counted)
    assert _sum(metrics, "shadowline_fleet_reviewed_cases") == e["reviewed"]
    assert _sum(metrics, "shadowline_fleet_overridden_cases") / e["reviewed"] == e["override_rate"]
    assert _sum(metrics, "shadowline_fleet_group_overridden_cases", group=GROUP) == e["overrides"]
    assert _sum(metrics, "shadowline_fleet_group_reviewed_cases", group=GROUP) == e["reviewed"]
    assert _sum(metrics, "shadowline_fleet_unresolved_disputes") == e["unresolved"]
    # the latency histogram holds the P95 figure's measurements (errors included); its quantile interpolates
    # inside the bucket where the nearest-rank P95 lies
    lat = "shadowline_fleet_prediction_latency_seconds"
    assert _sum(metrics, f"{lat}_count") == e["predictions"]
    assert _sum(metrics, f"{lat}_sum") == pytest.approx(sum(10.0 + k for k in range(40)) / 1000)
    rank = math.ceil(0.95 * e["predictions"])
    assert _sum(metrics, f"{lat}_bucket", le="0.025") < rank <= _sum(metrics, f"{lat}_bucket", le="0.05")
    assert 0.025 < e["latency_p95_ms"] / 1000 <= 0.05
    if PROMTOOL:  # Debian's prometheus package (scripts/install.sh)
        _promql_agrees(metrics, tmp_path)

    # -- the dashboard, logged in as a viewer
    login = http.post("/dashboard/login", data={"token": tokens["viewer"], "next": "/dashboard/"})
    assert login.status_code == 303 and "failed" not in login.headers["location"]
    pillars = _text(http.get("/dashboard/pillars", params={"window": "1h"}).text)
    assert f"{e['predictions']} predictions" in pillars and "error rate 5.00% (2 errors)" in pillars
    assert "overall 20.0% (7 of 35 reviewed cases)" in pillars and "unresolved disputes 2" in pillars
    assert "missed defects (the model passed them) 3" in pillars
    assert "defects the model caught that inspectors missed 2" in pillars
    # the stage table's total row: what it includes, ms per prediction, avg, P95, P99, n
    assert re.search(r"total \(model stages\) .*? [\d.]+ [\d.]+ 47\.0 49\.0 40 ", pillars), pillars
    assert "Defective 31.6%" in pillars and "low-confidence share 26.3%" in pillars
    shadow = _text(http.get("/dashboard/shadow", params=q).text)
    assert "NO-GO" in shadow and "adjudicators (fleet config): qa-lead" in shadow
    assert "unresolved disputes 2" in shadow and "override rate 20.0% (7 of 35)" in shadow
    assert "missed defects 3" in shadow and "false-positive rate 0.167" in shadow and "model recall 0.727" in shadow
    for c in rep["checks"]:
        assert f"{c['name']} {'pass' if c['passed'] else 'fail'} {c['detail']}" in shadow, c

    # -- the CLI, as a separate process
    env = {**os.environ, "SHADOWLINE_FLEET_URL": url, "SHADOWLINE_FLEET_TOKEN": tokens["viewer"]}
    md = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", "shadow", "report", REF, "--group", GROUP,
                         "--days", "1"], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "| override rate | 20.0% (7 of 35) |" in md and "| missed defects | 3 |" in md
    assert "| false-positive rate | 0.167 |" in md and "| unresolved disputes | 2 |" in md
    assert md.startswith(f"# Shadow report: {REF} — NO-GO")
    cli = json.loads(subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", "pillars", "--window", "1h",
                                     "--json"], capture_output=True, text=True, env=env, timeout=120).stdout)
    assert cli["snapshot"]["overrides"] == snap["overrides"] and cli["snapshot"]["impact"] == snap["impact"]
    assert cli["snapshot"]["health"]["error_rate"] == e["error_rate"]

    # -- the alert rules: the monitoring pass raises with the same values
    raised = {(a.device, a.rule): a.value for a in fleet.monitor.run_once()}
    assert raised[("*", "error_rate")] == e["error_rate"] and raised[("*", "override_rate")] == e["override_rate"]
    shown = {(a["device"], a["rule"]): a["value"] for a in http.get("/api/alerts", headers=viewer).json()}
    assert shown[("*", "override_rate")] == e["override_rate"]

    # -- the rollout gates judge the release's wave with the same functions
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    req = RolloutRequest(release=REF, group=GROUP, gates=Gates(min_reviews=10, min_predictions=20))
    gates = fleet.rollouts.judge(REF, req, list(DEVICES), {dev: "active" for dev in DEVICES}, since)["gates"]
    assert gates["error_rate"]["value"] == e["error_rate"] and gates["error_rate"]["samples"] == e["predictions"]
    assert gates["override_rate"]["value"] == e["override_rate"] and gates["override_rate"]["samples"] == e["reviewed"]
    assert gates["latency_p95"]["new_p95_ms"] == e["latency_p95_ms"]

    # -- the promotion gate refuses for exactly the criteria the report failed (after a sign-off)
    admin = auth(tokens["admin"])
    assert http.post("/api/shadow/signoff", json={"release": REF, "group": GROUP}, headers=admin).status_code == 200
    refused = http.post("/api/shadow/promote", json=q, headers=admin)
    assert refused.status_code == 409
    assert refused.json()["error"].endswith("exit criteria not met: days, recall, fp_rate, unresolved")
    http.close()
