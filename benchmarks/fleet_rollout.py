"""Fleet rollout and rollback of 10, 100 and 1,000 simulated devices in one run, on loopback: a real Mosquitto,
the real fleet service (`shadowline fleet serve`, a process of its own, driven over its HTTP API), and simulator
processes (tests/agent/simulator.py) running the REAL device agent for many devices per process on shared threads
(edge/agent/hub.py): MQTT session, state machine, download, signature and hash verify, cache, check, activation,
outbox.

For each size N: a freshly exported, signed release is rolled out to N devices in one wave and timed until the
fleet store shows every one of them reporting it active; then the rollout is rolled back (the one-command
rollback) and timed until every device reports its previous release active again. Baseline, measured in the same
run on the same devices: the bare download + verify of the same artifacts by the same devices (the agent's own
download and cache code on the same simulator workers; no MQTT, no state machine, no check, no fleet). Printed per
size: absolute times, time per device, rollout / baseline ratio, CPU seconds of the simulator processes and of the
fleet process, and the load average. Every temporary file is removed (the run checks the temp folder before and
after). Writes benchmarks/results/fleet_rollout[-quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_backend(label: str, store_url: str | None, sizes: list[int], args: argparse.Namespace, work: Path,
                tars: list[Path], trust: Path) -> dict[str, Any]:
    from tests.agent.conftest import PCB_IMAGES
    from tests.agent.simulator import FleetProcess, SimCluster, SimDevice, StoreWatch
    from tests.conftest import Mosquitto

    total = max(sizes)
    names = [f"sim-{i:04d}" for i in range(total)]
    broker = Mosquitto(work / f"broker-{label}", "allow_anonymous true\nmax_inflight_messages 0\n").start()
    fleet = FleetProcess(work / f"fleet-{label}", broker.url, trust, store_url=store_url)
    tokens = fleet.device_tokens(names)
    cluster = SimCluster(work / f"sim-{label}", broker.url, [SimDevice(name=n, token=tokens[n]) for n in names],
                         processes=args.processes, trust_store=trust, fleet_keys=[fleet.control_pub],
                         images=PCB_IMAGES[:1], workers=args.workers,
                         agent={"keep_releases": 2, "smoke_images": 1})
    watch: StoreWatch | None = None
    out: dict[str, Any] = {"backend": label, "devices": total, "sizes": []}
    try:
        fleet.start()
        refs, artifacts = [], []
        for tar in tars:
            b = fleet.api("POST", "/api/bundles", content=tar.read_bytes(), headers={"x-bundle-name": tar.name})
            spec = {"name": "pcb-screen", "stages": [{"role": "screen", "bundle": b["id"],
                                                      "candidate_classes": ["Defective"], "threshold": 0.5}]}
            rel = fleet.api("POST", "/api/releases", json=spec)
            refs.append(f"{rel['name']}@{rel['revision']}")
            artifacts.append([{"bundle": b["id"], "url": f"{fleet.url}/artifacts/{b['path']}",
                               "sha256": b["sha256"], "size": b["size"]}])
        t0 = time.perf_counter()
        cluster.start()
        print(f"[{label}] {total} devices in {args.processes} simulator processes connected in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        watch = StoreWatch(fleet.store_url)
        deadline = time.monotonic() + 120
        while len({d["id"] for d in fleet.api("GET", "/api/devices")} & set(names)) < total:
            if time.monotonic() > deadline:
                raise SystemExit("the fleet did not see every simulated device")
            time.sleep(0.2)
        for i, name in enumerate(names):
            fleet.api("PUT", f"/api/devices/{name}", json={"groups": ["all"] + [f"s{s}" for s in sizes if i < s]})

        def roll(ref: str, group: str, members: set[str]) -> tuple[str, float]:
            t0 = time.perf_counter()
            rid = fleet.api("POST", "/api/rollouts", json={"release": ref, "group": group, "waves": ["100%"],
                                                           "gates": {"wave_timeout_s": 900}})["id"]
            took = watch.wait_active(ref, members, 900)
            if took is None:
                raise SystemExit(f"rollout of {ref} to {group} did not finish: "
                                 f"{fleet.api('GET', f'/api/rollouts/{rid}')['counts']}")
            elapsed = time.perf_counter() - t0
            deadline = time.monotonic() + 60
            while fleet.api("GET", f"/api/rollouts/{rid}")["state"] != "completed" and time.monotonic() < deadline:
                time.sleep(0.05)
            return rid, elapsed

        t0 = time.perf_counter()
        _, first = roll(refs[0], "all", set(names))
        out["first_rollout_all_s"] = round(first, 3)
        print(f"[{label}] first rollout (empty caches) to all {total}: {first:.2f} s", flush=True)
        for k, n in enumerate(sizes, start=1):
            members = set(names[:n])
            cpu0, fcpu0, load0 = cluster.cpu_s(), fleet.cpu_s, loadavg()
            rid, rollout_s = roll(refs[k], f"s{n}", members)
            cpu1, fcpu1, load1 = cluster.cpu_s(), fleet.cpu_s, loadavg()
            t0 = time.perf_counter()
            fleet.api("POST", f"/api/rollouts/{rid}/rollback")
            call_s = time.perf_counter() - t0
            back = watch.wait_active(refs[0], members, 300, step=0.005)
            if back is None:
                raise SystemExit(f"rollback of {n} devices did not finish")
            rollback_s = time.perf_counter() - t0
            cpu2, fcpu2, load2 = cluster.cpu_s(), fleet.cpu_s, loadavg()
            state = cluster.state()
            bare_s = cluster.bare(artifacts[k], sorted(members))
            load3 = loadavg()
            row = {"devices": n, "rollout_s": round(rollout_s, 3), "rollout_ms_per_device": round(1000 * rollout_s / n, 2),
                   "bare_download_verify_s": round(bare_s, 3), "rollout_vs_bare": round(rollout_s / bare_s, 2),
                   "rollback_s": round(rollback_s, 3), "rollback_call_s": round(call_s, 3),
                   "rollback_ms_per_device": round(1000 * rollback_s / n, 2),
                   "rollback_from_cache": state["last_from_cache"] >= n,
                   "cpu_s": {"rollout": {"simulators": round(cpu1 - cpu0, 2), "fleet": round(fcpu1 - fcpu0, 2)},
                             "rollback": {"simulators": round(cpu2 - cpu1, 2), "fleet": round(fcpu2 - fcpu1, 2)}},
                   "load_average": {"rollout_start": load0, "rollout_end": load1, "rollback_end": load2,
                                    "baseline_end": load3}}
            out["sizes"].append(row)
            print(f"[{label}] {n:5d} devices: rollout {rollout_s:6.2f} s ({row['rollout_ms_per_device']:.1f} ms/device, "
                  f"{row['rollout_vs_bare']:.2f}x the bare download + verify of {bare_s:.2f} s); rollback "
                  f"{rollback_s:.3f} s ({row['rollback_ms_per_device']:.2f} ms/device, the call {call_s:.3f} s); "
                  f"CPU s rollout sim {cpu1 - cpu0:.1f} / fleet {fcpu1 - fcpu0:.1f}, rollback sim "
                  f"{cpu2 - cpu1:.1f} / fleet {fcpu2 - fcpu1:.1f}; load {load1[0]:.2f} {load1[1]:.2f} "
                  f"{load1[2]:.2f}", flush=True)
    finally:
        if watch is not None:
            watch.close()
        cluster.stop()
        fleet.stop()
        broker.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="device counts, comma-separated (the largest is the "
                                                          "simulated fleet)")
    ap.add_argument("--processes", type=int, default=4, help="simulator processes")
    ap.add_argument("--workers", type=int, default=4, help="worker threads per simulator process")
    ap.add_argument("--postgres", action="store_true", help="also run on PostgreSQL (a throwaway server)")
    ap.add_argument("--postgres-only", action="store_true", help="run on PostgreSQL only")
    ap.add_argument("--quick", action="store_true", help="10 and 50 devices, 2 processes, SQLite only")
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if args.quick:
        sizes, args.processes, args.postgres, args.postgres_only = [10, 50], 2, False, False

    from runtime.signing import generate_keys
    from tests.agent.conftest import make_tar
    from tests.conftest import export_preset

    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.iterdir()}
    work = Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    work.chmod(0o755)  # the throwaway PostgreSQL server runs as the postgres user, under work/tmp
    # every temporary file of this run and of the processes it starts goes under `work`, removed at the end
    (work / "tmp").mkdir()
    (work / "tmp").chmod(0o1777)
    os.environ["TMPDIR"] = str(work / "tmp")
    tempfile.tempdir = None
    results: dict[str, Any] = {"sizes": sizes, "processes": args.processes, "workers": args.workers,
                               "cpus": os.cpu_count(), "load_average_start": loadavg(), "runs": []}
    pg = None
    try:
        keys = work / "keys"
        keys.mkdir()
        private, public, _ = generate_keys(keys, "signer")
        trust = work / "trust"
        trust.mkdir()
        (trust / "signer.pub").write_bytes(public.read_bytes())
        tars = []
        (work / "tars").mkdir()
        for i in range(len(sizes) + 1):
            d = export_preset("pcb-aoi", work / f"b{i}", None, version=f"1.{i}")
            tars.append(make_tar(d, work / "tars", private))
        results["bundle_bytes"] = tars[0].stat().st_size
        if not args.postgres_only:
            results["runs"].append(run_backend("sqlite", None, sizes, args, work, tars, trust))
        if args.postgres or args.postgres_only:
            from tests.postgres import PostgresServer

            pg = PostgresServer(durable=True).start()
            results["runs"].append(run_backend("postgresql", pg.create_database("fleet"), sizes, args, work,
                                               tars, trust))
    finally:
        if pg is not None:
            pg.stop()
        results["temp_bytes_at_end"] = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
        shutil.rmtree(work, ignore_errors=True)
        tempfile.tempdir = None
        os.environ.pop("TMPDIR", None)
    # (other processes on this machine may come and go in the temp folder: only this run's folder is checked)
    left = sorted(n for n in {p.name for p in tmp.iterdir()} - before if n == work.name)
    results["temp_files_left"] = left
    results["load_average_end"] = loadavg()
    name = "fleet_rollout-quick.json" if args.quick else "fleet_rollout.json"
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nload average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in results['load_average_end'])} "
          f"on {os.cpu_count()} CPUs; the run's temporary files ({results['temp_bytes_at_end'] / 1e6:.0f} MB at the "
          f"end) removed, left in {tmp}: {len(left)} {left[:5]}")
    print(f"{'store':10s} {'devices':>7s} {'rollout s':>9s} {'ms/dev':>7s} {'vs bare':>7s} {'rollback s':>10s} "
          f"{'ms/dev':>7s} {'sim CPU s':>9s} {'fleet CPU s':>11s}")
    for run in results["runs"]:
        for r in run["sizes"]:
            cpu = r["cpu_s"]
            print(f"{run['backend']:10s} {r['devices']:7d} {r['rollout_s']:9.2f} {r['rollout_ms_per_device']:7.1f} "
                  f"{r['rollout_vs_bare']:7.2f} {r['rollback_s']:10.3f} {r['rollback_ms_per_device']:7.2f} "
                  f"{cpu['rollout']['simulators'] + cpu['rollback']['simulators']:9.1f} "
                  f"{cpu['rollout']['fleet'] + cpu['rollback']['fleet']:11.1f}")
    if left:
        raise SystemExit(f"temporary files left behind: {left}")


if __name__ == "__main__":
    main()
