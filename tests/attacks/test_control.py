"""Retained poisoning of a device's desired state and replayed commands, against both brokers (a real Mosquitto
with the generated config, and the embedded broker), with a real fleet service (HTTP artifacts through uvicorn)
and a real device agent. The attacker holds a service user of the broker (`observer`, readwrite on the prefix):
what anyone who can publish on a device's `desired`/`cmd` topics could do, whichever way they got there. Issue 12:
one retained desired state at revision 1,000,000,000 used to pin a device forever.

Every case must be refused by the device (a `control.refused` event the fleet counts), leave its handled revision
and its release alone, and the device must follow the next real desired state; the device's records all reach
the fleet (0 lost)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from edge.agent.config import AgentConfig
from edge.agent.headless import HeadlessHost
from edge.agent.runtime import Agent
from fleet.api import create_app
from fleet.control import ControlSigner
from fleet.protocol import Desired, ReleaseSpec, RollbackCommand, StageSpec, encode, sign_message
from fleet.security import add_token
from runtime.signing import load_private_key
from tests.agent.conftest import PCB_IMAGES, tars  # noqa: F401 - the signed PCB bundle tars (session fixture)
from tests.attacks.conftest import Rig, start_rig
from tests.attacks.mqtt_helpers import Peer, wait_until
from tests.conftest import free_port

DEVICE = "cam-a"
PIN = 1_000_000_000


class Setup:
    def __init__(self, rig: Rig, agent: Agent, attacker: Peer, refs: list[str]) -> None:
        self.rig, self.agent, self.attacker, self.refs = rig, agent, attacker, refs
        self.earlier = 0  # refusals counted by agents of this device that were stopped since
        self.topic = rig.topics.device(DEVICE, "desired")
        self.cmd_topic = rig.topics.device(DEVICE, "cmd")

    @property
    def fleet(self):
        return self.rig.fleet

    def running(self) -> str | None:
        current = self.agent.host.current()[0]
        return current.ref if current else None

    def settled_on(self, ref: str, timeout: float = 30) -> bool:
        """The device runs `ref`, idle, and the fleet's registry says so (its reported state arrived)."""
        def done() -> bool:
            row = self.fleet.store.get("devices", DEVICE) or {}
            return (self.running() == ref and not self.agent.machine.busy and row.get("active") == ref)
        return wait_until(done, timeout)

    def device_refusals(self) -> int:
        return self.earlier + sum(self.agent.refused_control.values())

    def restart(self, before_start=None) -> None:
        """Stop the agent (its unsent records stay in its outbox), run `before_start`, start a new one."""
        self.earlier += sum(self.agent.refused_control.values())
        config = self.agent.config
        self.agent.stop()
        if before_start is not None:
            before_start()
        self.agent = Agent(config, HeadlessHost(DEVICE, self.agent.host.workdir, PCB_IMAGES, load_models=False))
        self.agent.start()

    def fleet_refusals(self) -> int:
        rows = self.fleet.store.control_refused(DEVICE)
        return rows[0]["count"] if rows else 0

    def refused(self, before: int, reason: str, timeout: float = 15) -> None:
        """The device refused the control message for `reason` (a retained one may come twice when the device
        resubscribes), and its events reached the fleet."""
        assert wait_until(lambda: self.device_refusals() > before, timeout), self.agent.refused_control
        assert wait_until(lambda: self.fleet_refusals() == self.device_refusals() > before, timeout), \
            "the refusal never reached the fleet"
        assert self.fleet.store.control_refused(DEVICE)[0]["last_reason"] == reason

    def forged(self, revision: int, ref: str) -> Desired:
        """A desired state as the fleet would send it (real release, real artifact URLs), unsigned."""
        real = Desired.model_validate_json(self.fleet.store.get("desired", DEVICE)["payload"])
        spec = self.fleet.releases.get(ref)
        return real.model_copy(update={"revision": revision, "release": spec, "signature": None,
                                       "artifacts": self.fleet.desired.artifacts(spec)})


def _release(rig: Rig, tar: Path) -> str:
    bundle = rig.fleet.registry.push(tar)["id"]
    return rig.fleet.releases.create(ReleaseSpec(name="pcb-screen", stages=[StageSpec(
        role="screen", bundle=bundle, candidate_classes=["Defective"], threshold=0.5)])).ref


def _agent(rig: Rig, workdir: Path, keys: dict, token: str) -> Agent:
    config = AgentConfig(broker_url=rig.url, username=DEVICE, password=rig.password(DEVICE),
                         releases_dir=workdir / "releases", trust_store=keys["trust"], http_token=token,
                         fleet_keys=[rig.fleet.control.public_file], smoke_images=0, reconnect_min_s=0.1,
                         reconnect_max_s=0.5, publish_interval_s=0.05)
    return Agent(config, HeadlessHost(DEVICE, workdir, PCB_IMAGES, load_models=False)).start()


@pytest.fixture(params=["mosquitto", "embedded"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, config, keys, tars) -> Iterator[Setup]:  # noqa: F811
    port = free_port()
    token = add_token(Path(config.tokens_file), DEVICE, ["device"])
    rig = start_rig(request.param, tmp_path, config.model_copy(update={
        "monitor_interval_s": 0, "http_port": port, "public_url": f"http://127.0.0.1:{port}",
        "rollout_tick_s": 0.05}))
    server = uvicorn.Server(uvicorn.Config(create_app(rig.fleet, lambda: rig.service.ready), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    agent: Agent | None = None
    attacker: Peer | None = None
    try:
        assert wait_until(lambda: server.started, 10)
        refs = [_release(rig, tars["v1.0"]), _release(rig, tars["v1.1"])]
        agent = _agent(rig, tmp_path / DEVICE, keys, token)
        attacker = Peer(rig.url, "observer", "observer", rig.password("observer"))
        assert attacker.connected()
        s = Setup(rig, agent, attacker, refs)
        rig.fleet.desired.set(DEVICE, refs[0])
        assert s.settled_on(refs[0]), "the device never ran its first real release"
        yield s
    finally:
        if attacker is not None:
            attacker.close()
        if agent is not None:
            agent.stop()
        server.should_exit = True
        thread.join(10)
        rig.service.stop()
        if rig.mosquitto is not None:
            rig.mosquitto.stop()


def test_retained_poisoning_and_command_replay_are_refused(setup: Setup, attack, keys):
    s, kind = setup, setup.rig.kind
    r1, r2 = s.refs
    fleet, a = s.fleet, s.attacker

    def untouched(ref: str, revision: int) -> None:
        assert s.running() == ref and s.agent.machine.record.handled_revision == revision
        row = fleet.store.get("devices", DEVICE) or {}
        assert row.get("active") == ref

    rev = fleet.desired.revision(DEVICE)
    poisons = [
        ("unsigned retained desired state at revision 1,000,000,000", encode(s.forged(PIN, r2)), "unsigned"),
        ("retained desired state signed by an intruder's key", encode(sign_message(
            s.forged(PIN, r2), load_private_key(keys["other_private"]))), "bad_signature"),
        ("retained desired state signed by a bundle-signing key", encode(sign_message(
            s.forged(PIN, r2), load_private_key(keys["private"]))), "bad_signature"),
        ("the fleet's signed desired state with its revision raised", encode(fleet.control.desired(
            s.forged(rev, r2))).replace(f'"revision":{rev},'.encode(), f'"revision":{PIN},'.encode(), 1),
         "bad_signature"),
        ("the fleet's signed desired state of another device", encode(fleet.control.desired(
            s.forged(PIN, r2).model_copy(update={"device": "cam-b"}))), "wrong_device"),
    ]
    for name, payload, reason in poisons:
        with attack(f"{kind}: {name}"):
            before = s.fleet_refusals()
            assert a.publish(s.topic, payload, retain=True)
            s.refused(before, reason)
            untouched(r1, rev)

    with attack(f"{kind}: a device reconnecting finds a rogue retained desired state (pinning)"):
        before = s.fleet_refusals()
        s.restart(lambda: a.publish(s.topic, encode(s.forged(PIN, r2)), retain=True))
        s.refused(before, "unsigned")
        assert wait_until(lambda: s.agent.connected.is_set() and not s.agent.machine.busy, 10)
        untouched(r1, rev)
        # and it follows the next real desired state, which replaces the rogue one
        fleet.desired.set(DEVICE, r2)
        assert s.settled_on(r2), "the device did not follow the real desired state after the rogue one"
        assert s.agent.machine.record.handled_revision == fleet.desired.revision(DEVICE)

    old = fleet.store.rows("SELECT payload FROM desired WHERE device = ?", [DEVICE])[0]["payload"]
    fleet.desired.set(DEVICE, r1)
    assert s.settled_on(r1)
    rev = fleet.desired.revision(DEVICE)
    with attack(f"{kind}: replayed older signed desired state"):
        before = s.fleet_refusals()
        assert a.publish(s.topic, old.encode(), retain=True)
        s.refused(before, "stale_revision")
        untouched(r1, rev)

    # a real signed command (roll back to the release before: r2, from the cache), captured by the attacker
    a.subscribe(s.cmd_topic)
    fleet.desired.send_command(DEVICE, RollbackCommand())
    assert wait_until(lambda: [m for m in a.got if m[0] == s.cmd_topic], 10)
    captured = [p for t, p, _ in a.got if t == s.cmd_topic]
    assert s.settled_on(r2), "the real signed rollback command was not obeyed"
    with attack(f"{kind}: replayed signed command"):
        before = s.fleet_refusals()
        assert a.publish(s.cmd_topic, captured[0])
        s.refused(before, "replayed_command")
        untouched(r2, rev)
    with attack(f"{kind}: unsigned command"):
        before = s.fleet_refusals()
        assert a.publish(s.cmd_topic, encode(RollbackCommand(device=DEVICE)))
        s.refused(before, "unsigned")
        untouched(r2, rev)
    with attack(f"{kind}: expired signed command"):
        before = s.fleet_refusals()
        expired = ControlSigner(fleet.control.key, command_ttl_s=-60).command(RollbackCommand(), DEVICE)
        assert a.publish(s.cmd_topic, encode(expired))
        s.refused(before, "expired_command")
        untouched(r2, rev)

    with attack(f"{kind}: the device follows the next real desired state after every attack") as at:
        fleet.desired.set(DEVICE, r1)
        assert s.settled_on(r1)
        assert s.agent.machine.record.handled_revision == fleet.desired.revision(DEVICE) < PIN
        # every record the device sent (activation steps, refusals) reached the fleet
        wait_until(lambda: s.agent.publisher.drained() and s.fleet_refusals() == s.device_refusals(), 15)
        at.lost(s.device_refusals() - s.fleet_refusals())
        assert s.device_refusals() >= 10
