"""`shadowline fleet shadow | alerts | pillars` as real processes against the fleet API on a real uvicorn: text by
default and the API's JSON with --json, the exit code of the domain error on a refusal, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fleet.service import Fleet
from tests.fleet.figures_data import EXPECTED, GROUP, REF, served_fleet


@pytest.fixture
def served(config, bundles) -> Iterator[tuple[Fleet, str]]:
    with served_fleet(config, bundles["pcb-aoi"]) as s:
        yield s


def fleet_cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHADOWLINE_FLEET_URL": url, "SHADOWLINE_FLEET_TOKEN": token}
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_shadow_report_signoff_promote_and_audit(served, tokens):
    fleet, url = served
    admin, viewer = tokens["admin"], tokens["viewer"]
    md = fleet_cli(url, viewer, "shadow", "report", REF, "--group", GROUP, "--days", "1")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith(f"# Shadow report: {REF} — NO-GO")
    assert "| override rate | 20.0% (7 of 35) |" in md.stdout and "| missed defects | 3 |" in md.stdout
    assert "| unresolved | FAIL | 2 unresolved disputes of 9 disputed cases, at most 0 allowed |" in md.stdout
    js = json.loads(fleet_cli(url, viewer, "shadow", "report", REF, "--group", GROUP, "--days", "1", "--json").stdout)
    assert (js["reviewed"], js["unresolved"], js["missed_defects"]) == (35, 2, 3)
    assert js["fp_rate"] == pytest.approx(EXPECTED["fp_rate"]) and js["go"] is False

    denied = fleet_cli(url, viewer, "shadow", "signoff", REF, "--group", GROUP)
    assert denied.returncode == 14 and "lacks the role admin" in denied.stderr
    signed = fleet_cli(url, admin, "shadow", "signoff", REF, "--group", GROUP, "--note", "watched")
    assert signed.returncode == 0 and signed.stdout.startswith(f"signed off {REF} on {GROUP} by admin-user at ")

    refused = fleet_cli(url, admin, "shadow", "promote", REF, "--group", GROUP, "--days", "1")
    assert refused.returncode == 11  # Conflict
    assert "exit criteria not met: days, recall, fp_rate, unresolved" in refused.stderr
    done = fleet_cli(url, admin, "shadow", "promote", REF, "--group", GROUP, "--days", "1",
                     "--override-reason", "pilot line, QA accepts")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"promoted: seal@2 rolling out to {GROUP} (rollout ")
    assert "under an audited admin override (failed: days, recall, fp_rate, unresolved)" in done.stdout
    assert fleet.releases.get("seal@2").mode == "production"
    audit = fleet_cli(url, viewer, "shadow", "audit", "--release", "seal").stdout.splitlines()
    assert audit[0].split()[:5] == ["AT", "ACTOR", "RELEASE", "GROUP", "OUTCOME"]
    assert [line.split()[4] for line in audit[1:]] == ["refused", "overridden"]
    missing = fleet_cli(url, viewer, "shadow", "report", "nope@1", "--group", GROUP)
    assert missing.returncode == 0 and "cases" in missing.stdout  # an unknown release has no cases: no figures
    assert "| false-positive rate | no data |" in missing.stdout


def test_alerts_ack_silence_resolve(served, tokens):
    fleet, url = served
    fleet.monitor.run_once()
    admin, viewer = tokens["admin"], tokens["viewer"]
    listed = json.loads(fleet_cli(url, viewer, "alerts", "list", "--json").stdout)
    over = next(a for a in listed if a["device"] == "*" and a["rule"] == "override_rate")
    assert over["value"] == EXPECTED["override_rate"] and over["status"] == "firing"
    text = fleet_cli(url, viewer, "alerts", "list").stdout.splitlines()
    assert text[0].split() == ["ID", "SEVERITY", "STATUS", "DEVICE", "RULE", "VALUE", "THRESHOLD", "RAISED"]
    assert any(line.split()[3:5] == ["fleet", "override_rate"] for line in text[1:])

    acked = fleet_cli(url, admin, "alerts", "ack", over["id"], "--note", "on it")
    assert acked.returncode == 0 and "acknowledged  by admin-user" in acked.stdout
    twice = fleet_cli(url, admin, "alerts", "ack", over["id"])
    assert twice.returncode == 11 and "acknowledged by admin-user" in twice.stderr
    bad = fleet_cli(url, admin, "alerts", "silence", "--rule", "error_rate", "--for", "soon", "--reason", "x")
    assert bad.returncode == 2 and "duration 'soon'" in bad.stderr
    s = json.loads(fleet_cli(url, admin, "alerts", "silence", "--rule", "error_rate", "--for", "2h", "--reason",
                             "decoder fix rolling out", "--json").stdout)
    assert s["rule"] == "error_rate" and s["by"] == "admin-user"
    silences = fleet_cli(url, viewer, "alerts", "silences").stdout
    assert s["id"] in silences and "decoder fix rolling out" in silences
    assert fleet_cli(url, admin, "alerts", "unsilence", s["id"]).returncode == 0
    assert "(no silences)" in fleet_cli(url, viewer, "alerts", "silences").stdout
    resolved = fleet_cli(url, admin, "alerts", "resolve", over["id"], "--note", "fixture replaced")
    assert resolved.returncode == 0 and "resolved" in resolved.stdout
    shown = json.loads(fleet_cli(url, viewer, "alerts", "show", over["id"], "--json").stdout)
    assert shown["status"] == "resolved" and shown["resolved_by"]["note"] == "fixture replaced"
    assert fleet_cli(url, viewer, "alerts", "show", "nope").returncode == 10


def test_pillars_and_device(served, tokens):
    _, url = served
    out = fleet_cli(url, tokens["viewer"], "pillars", "--window", "1h").stdout
    assert "error rate            5.00%" in out and "override rate         20.0% (7 of 35 reviewed cases)" in out
    assert "missed defects        3" in out and "unresolved disputes   2" in out
    js = json.loads(fleet_cli(url, tokens["viewer"], "pillars", "--window", "1h", "--json").stdout)
    assert js["snapshot"]["health"]["latency_ms"]["total"]["p95"] == EXPECTED["latency_p95_ms"]
    dev = fleet_cli(url, tokens["viewer"], "devices", "show", "cam-2").stdout
    assert "predictions 24 h    20" in dev and "error rate 24 h     5.00%" in dev and "folder:E1.png" in dev
    no_token = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", "pillars", "--url", url],
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "SHADOWLINE_FLEET_TOKEN"})
    assert no_token.returncode == 2 and "no API token" in no_token.stderr
    down = fleet_cli("http://127.0.0.1:9", tokens["viewer"], "alerts", "list")
    assert down.returncode == 15 and "cannot reach the fleet API" in down.stderr
