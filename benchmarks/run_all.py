"""Run every benchmarks/*.py script, one after the other, and write benchmarks/results/SUMMARY.md.

Each script prints its figure last and writes benchmarks/results/NAME.json; this runner keeps that last line, the
exit status and the wall time. --quick passes --quick to the scripts that offer it (and sets
SHADOWLINE_BENCH_QUICK=1 for all) for a short run, e.g. in CI. A failing script is reported, the rest still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def scripts(folder: Path, only: list[str]) -> list[Path]:
    found = sorted(p for p in folder.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if only:
        names = {p.stem: p for p in found}
        unknown = [n for n in only if n not in names]
        if unknown:
            sys.exit(f"unknown benchmark(s) {unknown}; known: {', '.join(names)}")
        return [names[n] for n in only]
    return found


def offers_quick(script: Path) -> bool:
    return "--quick" in script.read_text(encoding="utf-8", errors="replace")


def run_one(script: Path, quick: bool, timeout: float, results: Path) -> dict:
    args = [sys.executable, str(script)] + (["--quick"] if quick and offers_quick(script) else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if quick:
        env["SHADOWLINE_BENCH_QUICK"] = "1"
    start = time.perf_counter()
    try:
        p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -1
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"timed out after {timeout:g} s"
    seconds = time.perf_counter() - start
    lines = [ln for ln in out.splitlines() if ln.strip()]
    result_file = results / f"{script.stem}.json"
    fresh = result_file.exists() and result_file.stat().st_mtime >= time.time() - seconds - 1
    return {"name": script.stem, "status": "ok" if rc == 0 else "failed", "exit_code": rc,
            "figure": lines[-1].strip() if lines else "", "seconds": round(seconds, 1),
            "quick": quick and offers_quick(script), "json": result_file.name if fresh else None,
            "stderr_tail": "" if rc == 0 else "\n".join(err.strip().splitlines()[-5:])}


def markdown(rows: list[dict], quick: bool) -> str:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = ["# Benchmark summary", "",
           f"{when} · {'quick mode' if quick else 'full run'} · `python benchmarks/run_all.py"
           f"{' --quick' if quick else ''}` · each figure is the script's last line, measured side by side with "
           "its named baseline in the same run", "",
           "| benchmark | status | figure | seconds | results |", "|---|---|---|---|---|"]
    for r in rows:
        figure = r["figure"].replace("|", "\\|") or "-"
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}** (exit {r['exit_code']})"
        out.append(f"| {r['name']}{' (quick)' if r['quick'] else ''} | {status} | {figure} | {r['seconds']} | "
                   f"{r['json'] or '-'} |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out += ["", "## Failures", ""]
        for r in failed:
            out += [f"### {r['name']}", "", "```", r["stderr_tail"] or "(no output)", "```", ""]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="run only these benchmarks (file names without .py)")
    ap.add_argument("--quick", action="store_true", help="short runs (scripts' own --quick where offered)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default 1800, quick 600)")
    ap.add_argument("--dir", type=Path, default=HERE, help="folder of benchmark scripts (results in DIR/results)")
    args = ap.parse_args()
    results = args.dir.resolve() / "results"
    timeout = args.timeout or (600.0 if args.quick else 1800.0)
    rows = []
    for s in scripts(args.dir.resolve(), args.names):
        print(f"== {s.stem}", flush=True)
        r = run_one(s, args.quick, timeout, results)
        print(f"   {r['status']} in {r['seconds']} s: {r['figure']}", flush=True)
        if r["status"] != "ok" and r["stderr_tail"]:
            print("   " + r["stderr_tail"].replace("\n", "\n   "), flush=True)
        rows.append(r)
    results.mkdir(parents=True, exist_ok=True)
    for name, text in (("SUMMARY.md", markdown(rows, args.quick)),
                       ("run_all.json", json.dumps({"quick": args.quick, "benchmarks": rows}, indent=2) + "\n")):
        tmp = results / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, results / name)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"benchmarks: {ok}/{len(rows)} ok; summary in {results / 'SUMMARY.md'}")
    sys.exit(0 if ok == len(rows) else 1)


if __name__ == "__main__":
    main()
