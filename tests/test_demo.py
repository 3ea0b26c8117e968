"""`shadowline demo --quick` as a real process: what it printed and the state it left in --workdir (the fleet's
SQLite store, the devices' stores, the promotion audit log) show that every step really happened."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.protocol import verify_message
from runtime.signing import TrustStore
from tests.conftest import REALDATA, ROOT

DEVICES = {"demo-cam-1", "demo-cam-2", "demo-cam-3"}


def _command_lines() -> str:
    """Every running process's full command line (ps would truncate them)."""
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass  # the process ended meanwhile
    return "\n".join(out)


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return list(c.execute(sql))


@pytest.mark.slow
def test_quick_demo_runs_every_step(tmp_path: Path, expected: dict) -> None:
    work = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "demo", "--quick", "--workdir", str(work),
                        "--realdata", str(REALDATA)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for i in range(1, 9):
        assert f"step {i}/8" in out
    assert "FAILED" not in out + p.stderr
    assert "go/no-go with the default exit criteria: NO-GO" in out  # one quick run cannot cover 14 days
    assert "AUDITED ADMIN OVERRIDE" in out
    m = re.search(r"report pcb-line@2 active after ([0-9.]+) s", out)
    assert m and 0 < float(m.group(1)) < 30
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard/ +\(log in with the admin token \S{20,}\)", out)

    db = work / "fleet-data" / "fleet.db"
    # predictions from every device, each image twice (two quick rounds), decided by the real model
    per_device = dict(_rows(db, "SELECT device, count(*) FROM predictions WHERE release='pcb-line' AND revision=1 "
                                "AND role='active' GROUP BY device"))
    assert per_device == {d: 8 for d in DEVICES}
    truth = expected["pcb-aoi_opset11"]
    for (rec,) in _rows(db, "SELECT record FROM predictions"):
        r = json.loads(rec)
        name = r["source"].split("-", 1)[1]
        want = truth[name]["scores"]["Defective"]
        assert abs(r["stages"][0]["scores"]["Defective"] - want) < 0.02, (name, r["stages"][0])
        assert r["decision"] == ("flag" if want >= 0.5 else "pass"), (name, r["decision"])
        assert r["models"] == {"screen": "pcb-aoi-v1.0", "verify": "pcb-aoi-v1.0"}

    # every prediction reviewed, with overrides of both kinds, each adjudicated
    verdicts = dict(((v, o), n) for v, o, n in _rows(
        db, "SELECT verdict, override, count(*) FROM reviews GROUP BY verdict, override"))
    assert sum(n for (v, o), n in verdicts.items()) >= 24
    assert verdicts.get(("false_positive", 1), 0) > 0 and verdicts.get(("missed_defect", 1), 0) > 0
    reviewed = {pid for (pid,) in _rows(db, "SELECT DISTINCT prediction_id FROM reviews")}
    assert reviewed == {pid for (pid,) in _rows(db, "SELECT id FROM predictions")}
    assert {d for (d,) in _rows(db, "SELECT DISTINCT device FROM reviews")} == DEVICES

    # revisions: shadow, promoted production, threshold-only child with the same bundles
    rel = {ref: (parent, json.loads(spec)) for ref, parent, spec in _rows(db, "SELECT ref, parent, spec FROM releases")}
    assert set(rel) == {"pcb-line@1", "pcb-line@2", "pcb-line@3"}
    assert rel["pcb-line@1"][1]["mode"] == "shadow" and rel["pcb-line@2"][1]["mode"] == "production"
    assert rel["pcb-line@2"][0] == "pcb-line@1" and rel["pcb-line@3"][0] == "pcb-line@2"
    s2, s3 = rel["pcb-line@2"][1]["stages"], rel["pcb-line@3"][1]["stages"]
    assert [s["bundle"] for s in s2] == [s["bundle"] for s in s3]
    assert s2[1]["thresholds"] != s3[1]["thresholds"]

    # rollouts: shadow and production completed, the retune rolled back; every device back on pcb-line@2
    states = dict(_rows(db, "SELECT release, state FROM rollouts"))
    assert states == {"pcb-line@1": "completed", "pcb-line@2": "completed", "pcb-line@3": "rolled_back"}
    devices = {d: (json.loads(g), a) for d, g, a in _rows(db, "SELECT id, groups, active FROM devices")}
    assert devices == {d: (["demo-line"], "pcb-line@2") for d in DEVICES}

    # the default path is signed: every device trusts the fleet's control key, which signed every desired state;
    # no device refused a control message (the rollouts above were followed through signatures only)
    control_pub = work / "fleet-data" / "control.pub"
    trust = TrustStore.load(control_pub)
    payloads = [(d, p) for d, p in _rows(db, "SELECT device, payload FROM desired") if p]
    assert {d for d, _ in payloads} == DEVICES
    assert all(verify_message(d, p.encode(), trust) for d, p in payloads)
    for d in DEVICES:
        fleet_cfg = json.loads((work / "devices" / d / "device.yaml").read_text())["fleet"]
        assert fleet_cfg["fleet_keys"] == [str(control_pub)] and not fleet_cfg.get("allow_unsigned_control")
    assert _rows(db, "SELECT count(*) FROM events WHERE kind = 'control.refused'") == [(0,)]

    audit = [json.loads(line) for line in (work / "fleet-data" / "promotion-audit.jsonl").read_text().splitlines()]
    assert [a["outcome"] for a in audit] == ["overridden"]
    assert "days" in audit[0]["failed_checks"] and audit[0]["reason"].strip()
    _shadow_report_agrees(out, db, work, audit[0])
    assert (work / "fleet-data" / "shadow-signoffs.jsonl").read_text().count("demo-admin") == 1

    # the devices' own stores hold the same predictions and reviews they sent
    for d in DEVICES:
        local = work / "devices" / d / "shadowline.db"
        assert _rows(local, "SELECT count(*) FROM reviews")[0][0] >= 8

    # stopped cleanly: no process of this workdir is left
    assert str(work) not in _command_lines()


def _shadow_report_agrees(out: str, db: Path, work: Path, audit: dict) -> None:
    """What the demo printed is the shadow report of what the fleet stored, computed here from its store with the
    fleet's one implementation; the dashboard said the same (the demo checked its page and says so), and the gate
    refused for exactly the criteria printed. Without adjudicators the same data is NO-GO with every dispute
    unresolved: disputes never vanish."""
    from fleet.analytics.shadow import SignOff, shadow_report
    from fleet.analytics.windows import Window
    from fleet.store import Store

    assert "the dashboard's Shadow report page shows the same verdict, criteria and figures (checked)" in out
    store = Store(db)
    try:
        preds, revs = list(store.predictions(release="pcb-line@1")), list(store.reviews(release="pcb-line@1"))
    finally:
        store.close()
    window = Window(start="2000-01-01T00:00:00+00:00", end="2100-01-01T00:00:00+00:00")
    rep = shadow_report(preds, revs, "pcb-line@1", window, adjudicators=["qa-lead"])
    o = rep.override_rate
    assert (f"{rep.cases} cases, {rep.reviewed} reviewed, {rep.disputed} disputed ({rep.adjudicated} adjudicated by "
            f"qa-lead, {rep.unresolved} unresolved), override rate {o.rate:.1%} ({o.overrides} of {o.reviews})") in out
    assert (f"model recall {rep.model_recall:.3f} vs inspector recall {rep.inspector_recall:.3f}; model "
            f"false-positive rate {rep.fp_rate:.3f}; missed defects {rep.missed_defects};") in out
    for c in rep.checks:
        if c.name not in ("days", "sign_off"):  # coverage depends on the run's date; sign-off came after
            assert f"[{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}" in out, c
    md = (work / "shadow-report.md").read_text()
    assert f"| override rate | {o.rate:.1%} ({o.overrides} of {o.reviews}) |" in md
    assert f"| unresolved disputes | {rep.unresolved} |" in md and rep.unresolved == 0 and o.overrides > 0
    printed = re.search(r"default criteria with the sign-off: NO-GO \(([^)]*)\)", out)
    assert printed and printed.group(1).split(", ") == audit["failed_checks"]
    bare = shadow_report(preds, revs, "pcb-line@1", window, sign_off=SignOff(by="x"))
    assert bare.unresolved == bare.disputed == rep.disputed and not bare.go
    assert "unresolved" in {c.name for c in bare.checks if not c.passed}
    assert bare.override_rate == o  # QA upheld every override: the figures stay, the disputes stay open


def test_a_failing_step_exits_non_zero_naming_it(tmp_path: Path) -> None:
    """A realdata folder without the model files: step 1 fails with the missing file named, nothing is left
    running and the work directory is kept for inspection."""
    fake = tmp_path / "realdata"
    (fake / "models").mkdir(parents=True)
    (fake / "images" / "pcb_winml").mkdir(parents=True)
    work = tmp_path / "work"
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "demo", "--quick", "--workdir", str(work),
                        "--realdata", str(fake)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert "FAILED: step 1 (export the shipped models into signed bundles) failed" in p.stderr
    assert "pcb-aoi_opset11.onnx not found" in p.stderr
    assert (work / "keys" / "demo.key").exists()
    no_models = subprocess.run([sys.executable, "-m", "shadowline.cli", "demo", "--realdata", str(tmp_path / "x")],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert no_models.returncode != 0 and "has no models/" in no_models.stderr


@pytest.mark.slow
def test_interrupt_stops_every_process(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) while images stream: the devices and the fleet service are stopped, the demo says so and
    exits non-zero."""
    import signal
    import time

    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "demo", "--quick", "--workdir", str(work),
                             "--realdata", str(REALDATA)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            seen.append(line)
            if "step 4/8" in line or time.monotonic() > deadline:
                break
        assert any("step 4/8" in line for line in seen), "".join(seen)
        assert _command_lines().count(str(work)) >= 4, "fleet and three devices run before the interrupt"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "stopping the devices and the fleet service" in out and "FAILED: interrupted" in err
    assert str(work) not in _command_lines()


def test_rerun_in_the_same_workdir_removes_only_the_demos_own_state(tmp_path: Path) -> None:
    from shadowline.demo import OWN, _reset

    (tmp_path / "devices" / "demo-cam-1").mkdir(parents=True)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "demo.key").write_text("k")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "tokens.json").write_text("{}")
    _reset(tmp_path)  # no fleet.yaml: not a demo's folder, nothing is touched
    assert (tmp_path / "devices").exists() and (tmp_path / "tokens.json").exists()
    (tmp_path / "fleet.yaml").write_text("{}")
    _reset(tmp_path)
    assert not any((tmp_path / name).exists() for name in OWN)
    assert (tmp_path / "keys" / "demo.key").read_text() == "k" and (tmp_path / "notes.txt").read_text() == "mine"
