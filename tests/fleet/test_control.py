"""The fleet's control key (fleet/control.py): made once in the data directory (0600) or given in fleet.yaml, never
a bundle-signing key; every desired state and command the fleet publishes is signed with it over the whole message;
stored states signed before (or under an earlier key) are signed again when republished; the refusals devices
report are counted per device on the dashboard and in /metrics."""

from __future__ import annotations

import json
import stat

import pytest

from fleet.config import FleetConfig
from fleet.protocol import (
    ClearCommand,
    CommandMessage,
    Desired,
    EventRecord,
    ReleaseSpec,
    StageSpec,
    encode,
    verify_message,
)
from fleet.service import Fleet
from runtime.errors import ConfigError, SignatureError
from runtime.signing import TrustStore, generate_keys, key_id
from tests.fleet.conftest import auth


def _release(fleet: Fleet, bundles) -> str:
    info = fleet.registry.push(bundles["squeezenet"])
    return fleet.releases.create(ReleaseSpec(name="sq", stages=[StageSpec(role="verify", bundle=info["id"])])).ref


def test_control_key_made_once_in_the_data_dir_and_kept(config: FleetConfig, keys):
    first = Fleet(config, publish=lambda *a: None)
    priv, pub = config.data_dir / "control.key", config.data_dir / "control.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    kid = first.control.key_id
    assert kid == key_id(TrustStore.load(pub).keys[kid]) and kid != keys["key_id"]
    first.close()
    again = Fleet(config, publish=lambda *a: None)
    try:
        assert again.control.key_id == kid, "a restart must not make a new key (devices would refuse everything)"
    finally:
        again.close()


def test_control_key_from_config_must_exist_and_be_its_own(tmp_path, config: FleetConfig, keys):
    with pytest.raises(ConfigError, match="control_key: .*missing.key does not exist"):
        Fleet(config.model_copy(update={"control_key": tmp_path / "missing.key"}))
    with pytest.raises(ConfigError, match="is also a bundle-signing key"):
        Fleet(config.model_copy(update={"control_key": keys["private"]}))
    priv, _, kid = generate_keys(tmp_path / "ops", "fleet-control")
    f = Fleet(config.model_copy(update={"control_key": priv}), publish=lambda *a: None)
    try:
        assert f.control.key_id == kid and f.control.public_file == priv.with_suffix(".pub")
    finally:
        f.close()


def test_desired_states_and_commands_are_signed_over_the_whole_message(fleet: Fleet, published, bundles, keys):
    ref = _release(fleet, bundles)
    fleet.desired.set("cam-1", ref)
    fleet.desired.set("cam-1", None)  # cleared: an empty retained state and a signed rollback command
    trust = TrustStore.load(fleet.control.public_file)
    (t1, desired, retained), (t2, cleared, _), (t3, cmd, _) = published.messages
    assert t1.endswith("/cam-1/desired") and retained and cleared == b"" and t3.endswith("/cam-1/cmd")
    assert verify_message(t1, desired, trust) == fleet.control.key_id
    assert verify_message(t3, cmd, trust) == fleet.control.key_id
    c = CommandMessage.model_validate_json(cmd).root
    assert isinstance(c, ClearCommand) and c.args.revision == 2
    assert c.device == "cam-1" and c.expires_at and c.nonce
    # the bundle-signing keys do not verify control messages, and every field is covered
    with pytest.raises(SignatureError, match="unknown key"):
        verify_message(t1, desired, TrustStore.load(keys["trust"]))
    doc = json.loads(desired)
    for field, value in (("revision", 10**9), ("device", "cam-2"), ("issued_at", "2030-01-01T00:00:00+00:00")):
        with pytest.raises(SignatureError, match="does not match"):
            verify_message(t1, json.dumps({**doc, field: value}).encode(), trust)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_message(t1, json.dumps({k: v for k, v in doc.items() if k != "signature"}).encode(), trust)


def test_republish_signs_states_stored_unsigned_or_under_an_earlier_key(fleet: Fleet, published, bundles, tmp_path):
    ref = _release(fleet, bundles)
    fleet.desired.set("cam-1", ref)
    fleet.desired.set("cam-2", ref)
    row = fleet.store.get("desired", "cam-1")
    unsigned = Desired.model_validate_json(row["payload"]).model_copy(update={"signature": None})
    fleet.store.upsert("desired", {**row, "payload": encode(unsigned).decode()}, pk="device")
    kept = fleet.store.get("desired", "cam-2")["payload"].encode()
    published.messages.clear()
    assert fleet.desired.republish() == 2
    trust = TrustStore.load(fleet.control.public_file)
    by_topic = {t: p for t, p, _ in published.messages}
    again = by_topic[fleet.topics.device("cam-1", "desired")]
    assert verify_message("cam-1", again, trust) == fleet.control.key_id
    assert Desired.model_validate_json(again).model_copy(update={"signature": None}) == unsigned
    assert by_topic[fleet.topics.device("cam-2", "desired")] == kept, "a state signed by the current key is sent as stored"


def test_refused_control_messages_counted_per_device(fleet: Fleet, client, tokens):
    evs = [EventRecord(device="cam-1", kind="control.refused", created_at=f"2026-01-01T00:00:0{i}.000+00:00",
                       detail={"topic": "desired", "reason": reason, "error": f"e{i}"})
           for i, reason in enumerate(["unsigned", "bad_signature", "stale_revision"])]
    evs.append(EventRecord(device="cam-2", kind="activation.step", detail={}))
    fleet.store.insert_many({"events": evs})
    fleet.devices.seen("cam-1")
    rows = fleet.store.control_refused()
    assert rows == [{"device": "cam-1", "count": 3, "last_at": evs[2].created_at, "last_reason": "stale_revision",
                     "last_topic": "desired", "last_error": "e2"}]
    metrics = client.get("/metrics", headers=auth(tokens["viewer"])).text
    assert 'shadowline_fleet_refused_control_messages_total{device="cam-1"} 3.0' in metrics
    client.post("/dashboard/login", data={"token": tokens["viewer"], "next": "/dashboard/"}, follow_redirects=False)
    page = client.get("/dashboard/devices/cam-1")
    assert page.status_code == 200 and 'id="control-refused"' in page.text and "stale_revision" in page.text
