"""The shipped Prometheus rules: `promtool check rules` accepts them, `promtool test rules` proves the burn-rate
and pillar alerts with the unit tests in deploy/prometheus/tests, in which every alert fires on a stream and clears
once the stream recovers, a planted bug makes those tests fail, and every runbook an alert links to exists in
docs/runbooks.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fleet.alerting.severity import RUNBOOKS
from tests.conftest import ROOT

PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus" / "shadowline.rules.yml"
UNIT = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
# The unit tests a planted bug below must break (fire_and_clear.test.yml proves each alert once more; running it for
# every planted bug would only add time).
PLANTED_UNIT = [f for f in UNIT if f.name in ("burn_rate.test.yml", "pillars.test.yml")]
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus package "
                                                             "(scripts/install.sh)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL or "promtool", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@needs_promtool
def test_promtool_check_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0 and "SUCCESS: 39 rules found" in done.stdout, done.stdout + done.stderr


@needs_promtool
def test_promtool_test_rules_proves_the_alerts():
    assert len(UNIT) >= 3 and len(PLANTED_UNIT) == 2
    done = promtool("test", "rules", *map(str, UNIT))
    assert done.returncode == 0 and done.stdout.count("SUCCESS") == len(UNIT), done.stdout + done.stderr


def _seconds(duration: str) -> int:
    """A Prometheus duration such as 1h30m in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return int(sum(int(n) * units[u] for n, u in parts))


def fire_and_clear(unit_files: list[Path]) -> dict[str, bool]:
    """Per alert name: whether some unit test expects it firing at one evaluation time and not firing at a later
    one of the same input (the alert fires on the stream and clears once the stream recovers)."""
    seen: dict[str, bool] = {}
    for f in unit_files:
        for test in yaml.safe_load(f.read_text())["tests"]:
            evals: dict[str, list[tuple[int, bool]]] = {}
            for case in test.get("alert_rule_test", []):
                evals.setdefault(case["alertname"], []).append((_seconds(case["eval_time"]),
                                                                bool(case.get("exp_alerts"))))
            for name, seq in evals.items():
                fired = [t for t, firing in seq if firing]
                seen[name] = seen.get(name, False) or any(t > min(fired) and not firing for t, firing in seq
                                                          if fired)
    return seen


def test_every_alert_fires_and_clears_in_the_unit_tests(tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    seen = fire_and_clear(UNIT)
    assert sorted(a for a in alerts if not seen.get(a)) == []
    # the check can fail: a unit test whose alert never clears
    only_fires = tmp_path / "only_fires.test.yml"
    only_fires.write_text(yaml.safe_dump({"tests": [{"alert_rule_test": [
        {"eval_time": "5m", "alertname": "A", "exp_alerts": [{"exp_labels": {"severity": "info"}}]},
        {"eval_time": "1m", "alertname": "A", "exp_alerts": []}]}]}))
    assert fire_and_clear([only_fires]) == {"A": False}


@needs_promtool
@pytest.mark.parametrize("old,new", [("* 0.01)", "* 0.1)"),  # the error budget taken as 10%: never fires
                                     ("ratio_rate5m > (14.4", "ratio_rate1h > (14.4"),  # no short window
                                     ("\n      and\n      deriv(shadowline_fleet_device_queue_depth[15m]) > 0", ""),  # draining
                                     ("le=\"0.25\"", "le=\"2.5\"")])  # the latency target in the wrong bucket
def test_the_unit_tests_catch_a_planted_bug(tmp_path, old, new):
    text = RULES.read_text()
    assert old in text, old
    (tmp_path / "tests").mkdir()
    (tmp_path / "shadowline.rules.yml").write_text(text.replace(old, new))
    for f in PLANTED_UNIT:
        shutil.copy(f, tmp_path / "tests" / f.name)
    # `promtool test rules A B` fails when A or B fails: each file runs in its own promtool at once, and the first
    # to fail settles it (the other is stopped); the files that pass say so.
    logs = {f.name: open(tmp_path / f"{f.name}.out", "w+") for f in PLANTED_UNIT}
    procs = {name: subprocess.Popen([PROMTOOL or "promtool", "test", "rules", f"tests/{name}"], cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT) for name, log in logs.items()}
    codes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 300
        while len(codes) < len(procs) and not any(codes.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
            codes.update({name: proc.returncode for name, proc in procs.items() if proc.poll() is not None})
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in logs.values():
            log.close()
    outputs = {name: (code, (tmp_path / f"{name}.out").read_text()) for name, code in codes.items()}
    failed = {name: out for name, (code, out) in outputs.items() if code != 0}
    assert failed, f"every unit test passed with the planted bug: {outputs}"
    assert all("FAILED" in out for out in failed.values()), failed


def _anchors() -> set[str]:
    text = (ROOT / "docs" / "runbooks.md").read_text()
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.M)}


def test_every_alert_links_a_runbook_that_exists():
    anchors = _anchors()
    doc = yaml.safe_load(RULES.read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 15
    for r in alerts:
        url = r["annotations"]["runbook_url"]
        assert url.startswith("docs/runbooks.md#") and url.split("#")[1] in anchors, (r["alert"], url)
        assert r["labels"]["severity"] in ("critical", "warning", "info")
    for family, anchor in RUNBOOKS.items():
        assert anchor in anchors, (family, anchor)
    for needed in ("queue-backlog", "model-rollback", "disk-full", "broker-down", "store-failure"):
        assert needed in anchors
