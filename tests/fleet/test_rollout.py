"""Staged rollouts through a real Mosquitto to 20 simulated devices: canary and waves, a release that fails the
device check stopped at the canary and rolled back, a latency gate, shadow-first, and a manual rollback."""

from __future__ import annotations

import pytest

from fleet.analytics.figures import percentile
from fleet.config import FleetConfig
from fleet.protocol import ReleaseSpec, StageSpec
from fleet.rollout import Gates, RolloutRequest, wave_sizes
from fleet.service import FleetService
from tests.fleet.devicesim import SimFleet, wait_for

DEVICES = [f"cam-{i:02d}" for i in range(20)]
# generous timeouts: CI shares two cores among several suites, and a loaded machine is slow, not broken
GATES = Gates(soak_s=0.5, wave_timeout_s=90, min_predictions=20)


def test_wave_sizes_and_p95():
    assert wave_sizes(["1", "10%", "50%", "100%"], 20) == [1, 2, 10, 20]
    assert wave_sizes(["1", "10%", "50%", "100%"], 5) == [1, 3, 5]
    assert wave_sizes(["50%"], 3) == [2, 3]
    assert wave_sizes(["5", "2"], 10) == [5, 10]
    assert percentile(list(range(1, 101)), 95) == 95 and percentile([], 95) is None
    with pytest.raises(ValueError, match="percentage"):
        RolloutRequest(release="a@1", group="g", waves=["150%"])


@pytest.fixture(scope="module")
def bad_bundle(keys, tmp_path_factory):
    from tests.conftest import export_preset

    return export_preset("squeezenet", tmp_path_factory.mktemp("bad"), keys["private"], version="9.9")


@pytest.fixture
def env(config: FleetConfig, mosquitto, bundles, bad_bundle):
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "rollout_tick_s": 0.05})).start()
    sims = None
    try:  # stopped even when the set-up fails: a service left running outlives the test's PostgreSQL server
        fleet = svc.fleet
        good = fleet.registry.push(bundles["pcb-aoi"])["id"]
        # a second, properly signed bundle that the simulated devices' check rejects (as a device would a bundle
        # whose reference outputs do not match its model)
        bad = fleet.registry.push(bad_bundle)["id"]
        for d in DEVICES:
            fleet.devices.add(d, groups=["line-1"])
        sims = SimFleet(mosquitto.url, fleet.topics, DEVICES, bad_bundles={bad},
                        latency={"seal@1": 10.0, "seal@2": 11.0, "seal@3": 40.0}, error_rate={"seal@4": 0.5})
        spec = lambda b: ReleaseSpec(name="seal" if b == good else "broken",
                                     stages=[StageSpec(role="verify", bundle=b)])
        for _ in range(4):
            fleet.releases.create(spec(good))  # seal@1..4 (same bundle: latency, errors differ only in the simulation)
        fleet.releases.create(spec(bad))  # broken@1
        base = fleet.rollouts.start(RolloutRequest(release="seal@1", group="line-1", waves=["100%"], gates=GATES))
        wait_for(lambda: fleet.rollouts.status(base["id"])["state"] != "running", 120, "baseline rollout")
        assert fleet.rollouts.status(base["id"])["state"] == "completed", \
            (sims.errors, sims.desired_seen, fleet.rollouts.status(base["id"]))
        assert set(sims.active.values()) == {"seal@1"}
        yield svc, sims
        assert not sims.errors
    finally:
        if sims is not None:
            sims.stop()
        svc.stop()


def _wait_state(fleet, rid, state, timeout=120):
    wait_for(lambda: fleet.rollouts.status(rid)["state"] not in ("running",), timeout, f"rollout {rid} to settle")
    st = fleet.rollouts.status(rid)
    assert st["state"] == state, st
    return st


def test_canary_waves_complete_then_manual_rollback(env):
    svc, sims = env
    fleet = svc.fleet
    ro = fleet.rollouts.start(RolloutRequest(release="seal@2", group="line-1", gates=GATES))
    assert ro["sizes"] == [1, 2, 10, 20] and ro["counts"] == {"activating": 1, "planned": 19}
    canary = ro["targets"][0]["device"]
    wait_for(lambda: sims.active[canary] == "seal@2", 60, "canary activation")
    # the canary soaks before the next wave: nobody else has the release yet
    assert sum(1 for v in sims.active.values() if v == "seal@2") == 1
    st = _wait_state(fleet, ro["id"], "completed")
    assert set(sims.active.values()) == {"seal@2"}
    assert st["counts"] == {"active": 20} and len(st["gates"]) == 4
    g0 = st["gates"][0]["gates"]
    assert g0["activation"]["passed"] and g0["error_rate"]["samples"] >= 20 and g0["error_rate"]["passed"]
    assert 0.9 < g0["latency_p95"]["value"] < 1.5 and g0["latency_p95"]["passed"]
    assert g0["override_rate"]["passed"] is None  # no reviews: not judged, and said so
    back = fleet.rollouts.rollback(ro["id"])
    assert back["state"] == "rolled_back"
    wait_for(lambda: set(sims.active.values()) == {"seal@1"}, 60, "all 20 back on seal@1")
    assert all(fleet.desired.current(d) == ("seal@1", None) for d in DEVICES)


def test_release_failing_the_device_check_stops_at_the_canary(env):
    svc, sims = env
    fleet = svc.fleet
    ro = fleet.rollouts.start(RolloutRequest(release="broken@1", group="line-1", gates=GATES))
    st = _wait_state(fleet, ro["id"], "halted")
    assert "wave 0 failed gate(s) activation" in st["reason"]
    canary = st["targets"][0]["device"]
    assert st["counts"] == {"rolled_back": 1, "planned": 19}
    assert st["gates"][0]["gates"]["activation"]["detail"] == {canary: "failed"}
    assert fleet.desired.current(canary) == ("seal@1", None)
    assert set(sims.active.values()) == {"seal@1"}  # the canary never left it; the others never saw broken@1
    assert all(fleet.desired.current(d)[0] == "seal@1" for d in DEVICES)


def test_latency_gate_halts_and_rolls_the_wave_back(env):
    svc, sims = env
    fleet = svc.fleet
    ro = fleet.rollouts.start(RolloutRequest(release="seal@3", group="line-1", waves=["2", "100%"], gates=GATES))
    st = _wait_state(fleet, ro["id"], "halted")
    lat = st["gates"][0]["gates"]["latency_p95"]
    assert lat["passed"] is False and lat["value"] > 2.5 and "latency_p95" in st["reason"]
    wave0 = [t["device"] for t in st["targets"] if t["wave"] == 0]
    wait_for(lambda: all(sims.active[d] == "seal@1" for d in wave0), 60, "wave 0 back on seal@1")
    assert set(sims.active.values()) == {"seal@1"}


def test_shadow_first_runs_the_release_as_candidate(env):
    svc, sims = env
    fleet = svc.fleet
    ro = fleet.rollouts.start(RolloutRequest(release="seal@2", group="line-1", waves=["1", "100%"],
                                             shadow_first=True, gates=GATES))
    _wait_state(fleet, ro["id"], "completed")
    assert set(sims.active.values()) == {"seal@1"} and set(sims.candidate.values()) == {"seal@2"}
    cand = list(fleet.store.predictions(release="seal@2", role="candidate", limit=5))
    assert len(cand) == 5 and all(p.role == "candidate" for p in cand)
    fleet.rollouts.rollback(ro["id"])
    wait_for(lambda: set(sims.candidate.values()) == {None}, 60, "candidates removed")
    assert set(sims.active.values()) == {"seal@1"}


def test_override_gate_and_conflicts(env):
    svc, sims = env
    fleet = svc.fleet
    gates = GATES.model_copy(update={"soak_s": 1.5, "min_reviews": 10, "max_override_rate": 0.2})
    ro = fleet.rollouts.start(RolloutRequest(release="seal@2", group="line-1", waves=["1", "100%"], gates=gates))
    from runtime.errors import Conflict

    with pytest.raises(Conflict, match="still running"):
        fleet.rollouts.start(RolloutRequest(release="seal@3", group="line-1"))
    canary = ro["targets"][0]["device"]
    wait_for(lambda: sims.active[canary] == "seal@2", 60, "canary activation")
    sims.review(canary, 20, override_rate=0.5)  # inspectors disagree with half the flags during the soak
    st = _wait_state(fleet, ro["id"], "halted")
    ov = st["gates"][0]["gates"]["override_rate"]
    assert ov["passed"] is False and ov["value"] == 0.5 and ov["samples"] == 20


def test_error_rate_gate_halts(env):
    svc, sims = env
    fleet = svc.fleet
    ro = fleet.rollouts.start(RolloutRequest(release="seal@4", group="line-1", waves=["1", "100%"], gates=GATES))
    st = _wait_state(fleet, ro["id"], "halted")
    err = st["gates"][0]["gates"]["error_rate"]
    assert err["passed"] is False and err["value"] > 0.2 and err["samples"] >= 20
    assert "error_rate" in st["reason"]
    wait_for(lambda: set(sims.active.values()) == {"seal@1"}, 60, "canary back on seal@1")
