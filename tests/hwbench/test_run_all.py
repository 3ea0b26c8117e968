"""benchmarks/run_all.py over a folder of small benchmark scripts: last line kept as the figure, --quick passed
only to scripts that offer it, a failing or hanging script reported while the others still run, SUMMARY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"

QUICK = '''import argparse, json, pathlib
ap = argparse.ArgumentParser(); ap.add_argument("--quick", action="store_true"); a = ap.parse_args()
out = pathlib.Path(__file__).parent / "results"; out.mkdir(exist_ok=True)
(out / "alpha.json").write_text(json.dumps({"quick": a.quick}))
print("detail line")
print("alpha: 2.0x faster than baseline" + (" (quick)" if a.quick else ""))
'''
PLAIN = '''import os, sys
print("beta: 0 frames dropped, quick env=" + os.environ.get("SHADOWLINE_BENCH_QUICK", "unset"))
'''
FAILS = '''import sys
print("gamma: starting")
sys.exit("gamma: broker refused the connection")
'''
HANGS = '''import time
print("delta: waiting", flush=True)
time.sleep(60)
'''


def test_run_all(tmp_path: Path):
    for name, text in {"alpha": QUICK, "beta": PLAIN, "gamma": FAILS, "delta": HANGS}.items():
        (tmp_path / f"{name}.py").write_text(text)
    r = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(tmp_path), "--quick", "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("benchmarks: 2/4 ok")
    rows = {row["name"]: row for row in json.loads((tmp_path / "results" / "run_all.json").read_text())["benchmarks"]}
    assert rows["alpha"]["figure"] == "alpha: 2.0x faster than baseline (quick)"
    assert rows["alpha"]["quick"] is True and rows["alpha"]["json"] == "alpha.json"
    assert json.loads((tmp_path / "results" / "alpha.json").read_text()) == {"quick": True}
    assert rows["beta"]["figure"] == "beta: 0 frames dropped, quick env=1" and rows["beta"]["quick"] is False
    assert rows["gamma"]["status"] == "failed" and "broker refused" in rows["gamma"]["stderr_tail"]
    assert rows["delta"]["status"] == "failed" and "timed out after 2 s" in rows["delta"]["stderr_tail"]
    summary = (tmp_path / "results" / "SUMMARY.md").read_text()
    assert "| alpha (quick) | ok | alpha: 2.0x faster than baseline (quick) |" in summary
    assert "| gamma | **failed** (exit 1) | gamma: starting |" in summary
    assert "### delta" in summary


def test_run_all_only_named(tmp_path: Path):
    (tmp_path / "alpha.py").write_text(QUICK)
    (tmp_path / "beta.py").write_text(PLAIN)
    r = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(tmp_path), "beta"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    rows = json.loads((tmp_path / "results" / "run_all.json").read_text())["benchmarks"]
    assert [row["name"] for row in rows] == ["beta"] and rows[0]["figure"].endswith("quick env=unset")
    r = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(tmp_path), "nope"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "unknown benchmark(s) ['nope']" in r.stderr
