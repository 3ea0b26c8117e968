"""The shipped Prometheus rules: `promtool check rules` accepts them, `promtool test rules` proves the burn-rate
and pillar alerts with the unit tests in deploy/prometheus/tests, a planted bug makes those tests fail, and every
runbook an alert links to exists in docs/runbooks.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.alerting.severity import RUNBOOKS
from tests.conftest import ROOT

PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus" / "shadowline.rules.yml"
UNIT = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
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
    assert len(UNIT) >= 2
    done = promtool("test", "rules", *map(str, UNIT))
    assert done.returncode == 0 and done.stdout.count("SUCCESS") == len(UNIT), done.stdout + done.stderr


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
    for f in UNIT:
        shutil.copy(f, tmp_path / "tests" / f.name)
    done = promtool("test", "rules", *[f"tests/{f.name}" for f in UNIT], cwd=tmp_path)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


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
