"""Fleet rollout and rollback on loopback: 100 simulated devices (in-process, each running the real device agent
against a headless host) connected to a real Mosquitto and the real fleet service (store, rollout loop, HTTP
artifacts). Goal: rollback of the 100 devices, until all report the previous release active, < 2 s.

Each round rolls a freshly exported, signed release out to all 100 devices in one wave (download, verify,
prepare, device check on reference.npz and a recent image, activate, commit) and times it until every device
reports it active in the fleet store; then rolls that rollout back (`Rollouts.rollback`, the one-command
rollback) and times it until every device reports the previous release active again, from its cache, without
downloads. The baseline, measured side by side in the same round, is the full rollout of the same devices.
Figures are medians over the rounds. Prints the rollback time last; writes benchmarks/results/fleet_rollout.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100, help="simulated devices")
    ap.add_argument("--rounds", type=int, default=3, help="rollout + rollback rounds (median reported)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from fleet.protocol import ReleaseSpec, StageSpec
    from fleet.rollout import Gates, RolloutRequest
    from runtime.signing import generate_keys
    from tests.agent.conftest import PCB_IMAGES, make_tar
    from tests.agent.fleet_rig import FleetRig
    from tests.conftest import Mosquitto, export_preset

    work = Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    keys = work / "keys"
    keys.mkdir()
    private, public, _ = generate_keys(keys, "signer")
    trust = work / "trust"
    trust.mkdir()
    (trust / "signer.pub").write_bytes(public.read_bytes())
    tars = []
    for i in range(args.rounds + 1):
        d = export_preset("pcb-aoi", work / f"b{i}", None, version=f"1.{i}")
        (work / "tars").mkdir(exist_ok=True)
        tars.append(make_tar(d, work / "tars", private))

    broker = Mosquitto(work / "broker", "allow_anonymous true\nmax_inflight_messages 0\n").start()
    rig = FleetRig(work / "fleet", broker.url, trust)
    rounds = []
    try:
        refs = []
        for tar in tars:
            bundle = rig.fleet.registry.push(tar)["id"]
            spec = ReleaseSpec(name="pcb-screen", stages=[StageSpec(role="screen", bundle=bundle,
                                                                    candidate_classes=["Defective"], threshold=0.5)])
            refs.append(rig.fleet.releases.create(spec).ref)
        names = [f"sim-{i:03d}" for i in range(args.devices)]
        rig.add_devices(names, PCB_IMAGES[:1], load_models=False, smoke_images=1, keepalive_s=60)
        if not rig.wait(lambda: len(rig.fleet.devices.list()) == args.devices, 60):
            raise SystemExit("devices did not all connect")
        for n in names:
            rig.fleet.devices.update(n, groups=["sim"])
        gates = Gates(wave_timeout_s=600)

        def roll(ref: str) -> tuple[str, float]:
            t0 = time.perf_counter()
            rid = rig.fleet.rollouts.start(RolloutRequest(release=ref, group="sim", waves=["100%"],
                                                          gates=gates))["id"]
            if not rig.wait(lambda: rig.all_active(ref), 600, step=0.005):
                raise SystemExit(f"rollout of {ref} did not finish: {rig.fleet.rollouts.status(rid)['counts']}")
            elapsed = time.perf_counter() - t0
            rig.wait(lambda: rig.fleet.rollouts.status(rid)["state"] == "completed", 30)
            return rid, elapsed

        print(f"initial rollout: {roll(refs[0])[1]:.2f} s", flush=True)  # every device starts on the first release
        for i in range(1, args.rounds + 1):
            rid, rollout_s = roll(refs[i])
            t0 = time.perf_counter()
            rig.fleet.rollouts.rollback(rid)
            revert_s = time.perf_counter() - t0
            rig.wait(lambda: all(a.host.current()[0].ref == refs[0] for a in rig.agents.values()), 120, step=0.005)
            hosts_s = time.perf_counter() - t0
            if not rig.wait(lambda: rig.all_active(refs[0]), 120, step=0.005):
                raise SystemExit("rollback did not finish")
            rollback_s = time.perf_counter() - t0
            downloads = sum(1 for a in rig.agents.values() if "prepare" not in a.machine.record.skipped)
            steps = [sum(a.machine.record.times.values()) for a in rig.agents.values()]
            rounds.append({"release": refs[i], "rollout_s": round(rollout_s, 3), "rollback_s": round(rollback_s, 3),
                           "fleet_revert_s": round(revert_s, 3), "all_hosts_swapped_s": round(hosts_s, 3),
                           "device_activation_median_s": round(statistics.median(steps), 4),
                           "rollback_devices_not_from_cache": downloads})
            print(f"round {i}: rollout {rollout_s:.2f} s, rollback {rollback_s:.2f} s (fleet revert published "
                  f"{revert_s:.2f} s, all hosts swapped {hosts_s:.2f} s, per device "
                  f"{statistics.median(steps) * 1000:.0f} ms) "
                  f"({downloads} devices re-checked instead of using the cache)", flush=True)
    finally:
        rig.close()
        broker.stop()

    rollout = statistics.median(r["rollout_s"] for r in rounds)
    rollback = statistics.median(r["rollback_s"] for r in rounds)
    result = {"devices": args.devices, "rounds": rounds, "rollout_median_s": round(rollout, 3),
              "rollback_median_s": round(rollback, 3), "rollback_goal_s": 2.0,
              "rollback_vs_rollout": round(rollback / rollout, 3),
              "baseline": "full rollout of a new release to the same devices in the same round",
              "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    out = ROOT / "benchmarks" / "results" / "fleet_rollout.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"rollout to {args.devices} devices (baseline): {rollout:.2f} s median")
    print(f"rollback of {args.devices} devices: {rollback:.2f} s median (goal < 2 s), "
          f"{rollback / rollout:.3f}x the full rollout")


if __name__ == "__main__":
    main()
