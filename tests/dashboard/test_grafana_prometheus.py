"""The shipped Grafana dashboard and Prometheus rules against a real Prometheus (Debian's `prometheus` binary,
installed by scripts/install.sh) scraping the running fleet service with a viewer token: every panel's query and
every template variable is valid PromQL that returns series, and every recording rule produces series. A query
naming a metric or a label value the fleet does not export (the old "Queue depth" panel) comes back empty and
fails here; names alone are checked in test_pages.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.fleet.apiserver import ApiServer

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "deploy" / "grafana" / "shadowline-fleet.json"
RULES = ROOT / "deploy" / "prometheus" / "shadowline.rules.yml"
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is installed by scripts/install.sh "
                                "(Debian: prometheus)")

# Grafana's built-in variables, as Grafana would fill them for a 1 s scrape interval and a 1 h time range
GRAFANA_VARS = {"$__rate_interval": "10s", "$__range": "1h", "$__interval": "1s"}


def grafana_expr(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # the dashboard's own variables, set to "All" (allValue ".*")
    return re.sub(r"\$\{?(device|group)\}?", ".*", expr)


class Prometheus:
    def __init__(self, workdir: Path, target: str, token_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the shipped rules as they are, evaluated every second instead of every 30 s (the test's only change)
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(workdir / "rules.yml")],
                  "scrape_configs": [{"job_name": "shadowline-fleet", "metrics_path": "/metrics",
                                      "authorization": {"credentials_file": str(token_file)},
                                      "static_configs": [{"targets": [target]}]}]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.args = [str(PROMETHEUS), f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, r.status_code, body)
        return body["data"]["result"]

    def wait(self, what: str, ok: Any, timeout: float = 60.0) -> None:
        """Wait on Prometheus's own answers (not a fixed sleep): until `ok()` holds or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if ok():
                    return
            except (httpx.HTTPError, AssertionError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        pytest.fail(f"Prometheus: {what} within {timeout:.0f} s\n{self.log.read_text()[-2000:]}")


def _epoch(rfc3339: str) -> float:
    """Prometheus writes nanoseconds and "Z"; Python 3.10's fromisoformat takes microseconds and "+00:00"."""
    from datetime import datetime

    m = re.fullmatch(r"([^.Z+]+)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    frac = (m.group(2) or ".0")[:7]
    return datetime.fromisoformat(m.group(1) + frac + m.group(3).replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def fleet_in_production(tmp_path_factory: pytest.TempPathFactory, bundles, keys) -> Iterator[tuple[Any, str]]:
    """The dashboard tests' world (tests/dashboard/world.py) plus what a fleet in production also has: the
    release in production on dev-a (its flags are the actions sent), metrics records from each device (queue
    depth) and an alerting channel. No device made an error, no message was malformed and no notification was
    sent yet: those panels must read 0, not "no data"."""
    from fleet.alerting.config import AlertingConfig
    from fleet.config import FleetConfig
    from fleet.protocol import MetricsRecord
    from fleet.security import add_token
    from fleet.service import Fleet
    from tests.dashboard.world import DEVICES, model_outputs, populate, records

    tmp_path = tmp_path_factory.mktemp("fleet")
    tokens_file = tmp_path / "tokens.json"
    viewer = add_token(tokens_file, "prometheus", ["viewer"])
    alerting = AlertingConfig.model_validate({"channels": [{"kind": "webhook", "name": "ops",
                                                            "url": "http://127.0.0.1:9/alerts"}]})
    fleet = Fleet(FleetConfig(data_dir=tmp_path / "fleet", trust_store=keys["trust"], tokens_file=tokens_file,
                              public_url="http://fleet.test", alerting=alerting), publish=lambda t, p, r: None)
    try:
        populate(fleet, bundles["pcb-aoi"])
        now = datetime.now(timezone.utc)
        preds, _ = records(model_outputs(bundles["pcb-aoi"]), "pcb-line", 1, now, days=0, per_day=4)
        fleet.store.insert_records("predictions", [p.model_copy(update={"mode": "production", "device": "dev-a"})
                                                   .model_dump(mode="json") for p in preds])
        fleet.store.insert_records("metrics", [
            MetricsRecord(device=d, created_at=(now - timedelta(minutes=m)).isoformat(), release="pcb-line",
                          revision=1, window_s=60.0, values={"queue_depth": float(m), "queue_capacity": 64.0})
            .model_dump(mode="json") for d in DEVICES for m in (30, 5)])
        yield fleet, viewer
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def prometheus(fleet_in_production, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One Prometheus for the module's read-only queries."""
    fleet, viewer = fleet_in_production
    tmp_path = tmp_path_factory.mktemp("prometheus")
    token_file = tmp_path / "viewer.token"
    token_file.write_text(viewer)
    token_file.chmod(0o600)
    with ApiServer(fleet) as api, Prometheus(tmp_path, f"127.0.0.1:{api.port}", token_file) as prom:
        prom.wait("scraped the fleet", lambda: [float(s["value"][1]) for s in prom.query(
            'up{job="shadowline-fleet"}')] == [1.0])
        # rates need two samples in their window and the recording rules an evaluation after them
        prom.wait("has 3 scrapes", lambda: float(prom.query(
            'count_over_time(up{job="shadowline-fleet"}[1m])')[0]["value"][1]) >= 3)
        started = time.time()
        prom.wait("evaluated every rule group after the third scrape", lambda: all(
            _epoch(g["lastEvaluation"]) > started for g in httpx.get(
                f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]))
        yield prom


def test_every_grafana_query_returns_series_from_the_running_fleet(prometheus):
    dash = json.loads(DASHBOARD.read_text())
    panels = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    assert len(panels) >= 15
    empty = {}
    for title, expr in panels:
        result = prometheus.query(grafana_expr(expr))
        if not result:
            empty[title] = expr
    assert not empty, f"panels with no data from a fleet that has all of it: {json.dumps(empty, indent=1)}"
    # template variables: label_values(metric, label) lists the label's values of that metric
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"device", "group"}
    for v in variables:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["query"]).groups()  # type: ignore[union-attr]
        values = {s["metric"].get(label) for s in prometheus.query(metric)}
        assert values and None not in values, (v["name"], v["query"], values)


def test_every_recording_rule_produces_series(prometheus):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    assert len(records) >= 10
    empty = [r for r in records if not prometheus.query(r)]
    assert not empty, empty
    # Prometheus loaded every alerting rule without an error, and none is firing on a healthy world's scrape
    # except the ones the world raises itself (its critical error-rate incident)
    rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [r for g in rules for r in g["rules"]]
    assert len(loaded) == sum(len(g["rules"]) for g in groups)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded
                                                       if r["health"] != "ok"]


def test_an_unknown_label_value_is_caught(prometheus):
    """The check above is able to fail: a panel selecting a label value the fleet never exports is empty."""
    assert prometheus.query(grafana_expr('shadowline_fleet_device_queue_depth{device=~"$device"}'))
    assert not prometheus.query(grafana_expr('shadowline_fleet_predictions_total{decision="passed"}'))
    assert not prometheus.query("shadowline_fleet_queue_depth")
