"""The device simulator itself (tests/agent/simulator.py): devices running the real agent, many per process on a
hub's shared threads, follow a rollout and a rollback of the real fleet service (its own process) on a real
Mosquitto, and the fleet store sees what the devices' hosts really run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.agent.conftest import PCB_IMAGES
from tests.agent.simulator import FleetProcess, SimCluster, SimDevice, StoreWatch

DEVICES, PROCESSES, WORKERS = 20, 2, 4


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for process {pid}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_simulated_devices_follow_a_rollout_and_a_rollback(tmp_path: Path, mosquitto, tars: dict[str, Path],
                                                           keys: dict[str, Path]) -> None:
    names = [f"sim-{i:03d}" for i in range(DEVICES)]
    fleet = FleetProcess(tmp_path / "fleet", mosquitto.url, keys["trust"])
    tokens = fleet.device_tokens(names)
    cluster = SimCluster(tmp_path / "sim", mosquitto.url, [SimDevice(name=n, token=tokens[n]) for n in names],
                         processes=PROCESSES, trust_store=keys["trust"], fleet_keys=[fleet.control_pub],
                         images=PCB_IMAGES[:1], workers=WORKERS,
                         agent={"keep_releases": 2, "smoke_images": 1})
    watch = None
    try:
        fleet.start()
        refs = []
        for key in ("v1.0", "v1.1"):
            b = fleet.api("POST", "/api/bundles", content=tars[key].read_bytes(),
                          headers={"x-bundle-name": tars[key].name})
            rel = fleet.api("POST", "/api/releases", json={"name": "pcb", "stages": [
                {"role": "screen", "bundle": b["id"], "candidate_classes": ["Defective"], "threshold": 0.5}]})
            refs.append(f"{rel['name']}@{rel['revision']}")
        cluster.start(timeout=60)
        # many devices per process on a fixed set of threads: not one (or three) per device
        for p in cluster.procs:
            assert _threads(p.proc.pid) < 16, f"simulator process has {_threads(p.proc.pid)} threads"
        deadline = time.monotonic() + 30
        while len({d["id"] for d in fleet.api("GET", "/api/devices")} & set(names)) < DEVICES:
            assert time.monotonic() < deadline, "the fleet did not register every simulated device"
            time.sleep(0.1)
        for n in names:
            fleet.api("PUT", f"/api/devices/{n}", json={"groups": ["sim"]})
        watch = StoreWatch(fleet.store_url)
        rids = []
        for ref in refs:
            rid = fleet.api("POST", "/api/rollouts", json={"release": ref, "group": "sim", "waves": ["100%"]})["id"]
            took = watch.wait_active(ref, set(names), 60)
            assert took is not None, fleet.api("GET", f"/api/rollouts/{rid}")["counts"]
            print(f"rollout of {ref} to {DEVICES} simulated devices: {took:.2f} s")
            deadline = time.monotonic() + 20
            while (status := fleet.api("GET", f"/api/rollouts/{rid}"))["state"] != "completed":
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            assert status["counts"] == {"active": DEVICES}
            rids.append(rid)
        state = cluster.state()
        assert state["active"] == {refs[1]: DEVICES} and state["connected"] == DEVICES
        assert state["activations"] == 2 * DEVICES and state["bad_messages"] == 0

        fleet.api("POST", f"/api/rollouts/{rids[1]}/rollback")
        took = watch.wait_active(refs[0], set(names), 30)
        assert took is not None
        print(f"rollback of {DEVICES} simulated devices: {took:.2f} s")
        state = cluster.state()
        # what the hosts run, not only what they reported; the previous release came from each device's cache
        assert state["active"] == {refs[0]: DEVICES}
        assert state["activations"] == 3 * DEVICES
        assert state["last_from_cache"] == DEVICES
        assert fleet.api("GET", f"/api/rollouts/{rids[1]}")["state"] == "rolled_back"
    finally:
        if watch is not None:
            watch.close()
        cluster.stop()
        fleet.stop()
    assert all(p.proc.returncode == 0 for p in cluster.procs), [p.log.read_text()[-1000:] for p in cluster.procs]
