"""The agent acts only on control messages its fleet signed (edge/agent/control.py): no fleet key, no agent (unless
the config explicitly allows unsigned control); signatures by any trusted key (rotation); the device's id and the
whole message covered; commands expire and their nonces are remembered across a restart."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from edge.agent.config import AgentConfig
from edge.agent.control import ControlGuard, Refused
from edge.agent.headless import HeadlessHost
from edge.agent.runtime import Agent
from fleet.control import ControlSigner
from fleet.protocol import Desired, ReleaseSpec, ReportCommand, RollbackCommand, StageSpec, Topics, encode
from runtime.errors import ConfigError
from runtime.signing import generate_keys, load_private_key

TOPIC = Topics().device("cam-1", "desired")


def _desired(device: str = "cam-1", revision: int = 3) -> Desired:
    return Desired(device=device, revision=revision, artifacts=[],
                   release=ReleaseSpec(name="r", stages=[StageSpec(role="verify", bundle="b-v1.0")]))


def _config(tmp_path, **kw) -> AgentConfig:
    return AgentConfig(broker_url="mqtt://127.0.0.1:1", releases_dir=tmp_path / "releases", **kw)


def test_no_fleet_key_no_agent_unless_unsigned_control_is_allowed(tmp_path, caplog):
    host = HeadlessHost("cam-1", tmp_path / "host")
    with pytest.raises(ConfigError, match="fleet.fleet_keys: no fleet control key configured"):
        Agent(_config(tmp_path), host)
    with caplog.at_level(logging.WARNING, logger="edge.agent.control"):
        agent = Agent(_config(tmp_path, allow_unsigned_control=True), host)
    assert "allow_unsigned_control is set" in caplog.text and not agent.control.verifying
    agent.machine.close()
    # then unsigned messages pass (what the setting asks for), still only for this device
    guard = ControlGuard(_config(tmp_path, allow_unsigned_control=True), "cam-1")
    guard.check_desired(TOPIC, encode(_desired()), _desired())
    with pytest.raises(Refused, match="wrong_device"):
        guard.check_desired(TOPIC, encode(_desired("cam-2")), _desired("cam-2"))


def test_signatures_rotation_and_what_they_cover(tmp_path, keys):
    old = ControlSigner(load_private_key(keys["control_private"]))
    new_priv, new_pub, _ = generate_keys(tmp_path / "new", "control")
    new = ControlSigner(load_private_key(new_priv))
    intruder = ControlSigner(load_private_key(keys["other_private"]))
    # a device that trusts the old and the new key (rotation): both pass
    guard = ControlGuard(_config(tmp_path, fleet_keys=[keys["control_public"], new_pub]), "cam-1")
    for signer in (old, new):
        d = signer.desired(_desired())
        assert guard.check_desired(TOPIC, encode(d), d) == signer.key_id
    only_new = ControlGuard(_config(tmp_path, fleet_keys=[new_pub]), "cam-1")
    cases = [(old.desired(_desired()), "bad_signature"), (intruder.desired(_desired()), "bad_signature"),
             (_desired(), "unsigned"), (new.desired(_desired("cam-2")), "wrong_device")]
    for msg, reason in cases:
        with pytest.raises(Refused) as err:
            only_new.check_desired(TOPIC, encode(msg), msg)
        assert err.value.reason == reason
    # the signature covers the raw message: a raised revision, or a field added, breaks it
    raw = encode(new.desired(_desired()))
    for tampered in (raw.replace(b'"revision":3', b'"revision":1000000000', 1), raw[:-1] + b',"extra":1}'):
        with pytest.raises(Refused, match="bad_signature"):
            only_new.check_desired(TOPIC, tampered, _desired())


def test_commands_expire_and_a_replay_is_refused_after_a_restart(tmp_path, keys):
    signer = ControlSigner(load_private_key(keys["control_private"]), command_ttl_s=60)
    config = _config(tmp_path, fleet_keys=[keys["control_public"]])
    guard = ControlGuard(config, "cam-1")
    cmd = signer.command(ReportCommand(), "cam-1")
    topic = Topics().device("cam-1", "cmd")
    guard.check_command(topic, encode(cmd), cmd)
    guard.fresh_nonce(cmd)
    with pytest.raises(Refused, match="replayed_command"):
        ControlGuard(config, "cam-1").fresh_nonce(cmd)  # a new process on the same disk remembers it
    later = datetime.now(timezone.utc) + timedelta(seconds=61)
    with pytest.raises(Refused, match="expired_command"):
        guard.check_command(topic, encode(cmd), cmd, now=later)
    other = signer.command(ReportCommand(), "cam-2")
    with pytest.raises(Refused, match="wrong_device"):
        guard.check_command(topic, encode(other), other)
    unsigned = RollbackCommand(device="cam-1")
    with pytest.raises(Refused, match="unsigned"):
        guard.check_command(topic, encode(unsigned), unsigned)
