"""Halting a rollout: no further wave starts, devices keep what they were given, the reason is kept; a later
rollback still returns them. Through the Python API, the HTTP API and `shadowline fleet rollout halt`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fleet.cli import fleet_group
from fleet.protocol import ReleaseSpec, Reported, StageSpec
from fleet.rollout import RolloutRequest
from runtime.errors import Conflict, NotFound
from tests.fleet.apiserver import ApiServer
from tests.fleet.conftest import auth

DEVICES = ["cam-0", "cam-1", "cam-2", "cam-3"]


@pytest.fixture
def world(fleet, bundles):
    bundle = fleet.registry.push(bundles["pcb-aoi"])["id"]
    for _ in range(2):
        fleet.releases.create(ReleaseSpec(name="seal", stages=[StageSpec(role="verify", bundle=bundle)]))
    for d in DEVICES:
        fleet.devices.add(d, groups=["line"])
    return fleet


def _activate(fleet, ref: str, devices: list[str]) -> None:
    for d in devices:
        fleet.devices.report(Reported(device=d, active=ref, desired_revision=fleet.desired.revision(d),
                                      activation={"state": "committed"}))


def test_halt_stops_waves_and_keeps_devices_where_they_are(world):
    fleet = world
    ro = fleet.rollouts.start(RolloutRequest(release="seal@1", group="line", waves=["1", "50%", "100%"]))
    canary = ro["targets"][0]["device"]
    _activate(fleet, "seal@1", [canary])
    fleet.rollouts.tick()  # the canary passes (no data: gates skipped) and wave 1 starts
    st = fleet.rollouts.status(ro["id"])
    assert st["wave"] == 1 and st["counts"] == {"active": 1, "activating": 1, "planned": 2}
    second = next(t["device"] for t in st["targets"] if t["state"] == "activating")

    halted = fleet.rollouts.halt(ro["id"], "inspectors report odd flags")
    assert halted["state"] == "halted" and halted["reason"] == "halted at wave 1: inspectors report odd flags"
    _activate(fleet, "seal@1", [second])
    for _ in range(3):
        fleet.rollouts.tick()
    st = fleet.rollouts.status(ro["id"])
    assert st["state"] == "halted" and st["wave"] == 1 and st["counts"]["planned"] == 2
    # devices stay on what they were given: the two started ones keep seal@1, the others never got it
    assert fleet.desired.current(canary)[0] == "seal@1" and fleet.desired.current(second)[0] == "seal@1"
    assert {fleet.desired.current(d)[0] for d in DEVICES if d not in (canary, second)} == {None}
    with pytest.raises(Conflict, match="halted, not running"):
        fleet.rollouts.halt(ro["id"], "again")
    with pytest.raises(NotFound):
        fleet.rollouts.halt("nope", "x")
    # a halted rollout can still be rolled back: both devices return to what they ran before (nothing)
    back = fleet.rollouts.rollback(ro["id"], "manual rollback")
    assert back["state"] == "rolled_back" and back["reason"].startswith("halted at wave 1: inspectors")
    assert fleet.desired.current(canary)[0] is None and fleet.desired.current(second)[0] is None


def test_halt_over_http_and_cli(world, client, tokens):
    fleet = world
    ro = fleet.rollouts.start(RolloutRequest(release="seal@1", group="line", waves=["1", "100%"]))
    r = client.post(f"/api/rollouts/{ro['id']}/halt", json={"reason": "x"}, headers=auth(tokens["viewer"]))
    assert r.status_code == 403
    r = client.post(f"/api/rollouts/{ro['id']}/halt", json={"reason": "bad", "extra": 1},
                    headers=auth(tokens["admin"]))
    assert r.status_code == 422 and fleet.rollouts.status(ro["id"])["state"] == "running"
    with ApiServer(fleet) as api:
        runner = CliRunner()
        res = runner.invoke(fleet_group, ["rollout", "halt", ro["id"], "--reason", "line stopped", "--json",
                                          "--url", api.url, "--token", tokens["admin"]])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["state"] == "halted" and out["reason"] == "halted at wave 0: line stopped"
        again = runner.invoke(fleet_group, ["rollout", "halt", ro["id"], "--url", api.url,
                                            "--token", tokens["admin"]])
        assert again.exit_code != 0 and "HTTP 409" in str(again.exception)
    # without a body the default reason is used
    ro2 = fleet.rollouts.start(RolloutRequest(release="seal@2", group="line", waves=["1", "100%"]))
    r = client.post(f"/api/rollouts/{ro2['id']}/halt", headers=auth(tokens["admin"]))
    assert r.status_code == 200 and r.json()["reason"] == "halted at wave 0: manual halt"
