"""MQTT attacks against both brokers (a real Mosquitto with the generated config, and the embedded broker), each
with a real fleet service ingesting: no credentials, wrong ones, stepping outside one's subtree, reading others'
state, taking over the fleet's or another device's session, last wills and retained messages in the wrong place,
oversized packets, revoked and rotated passwords. Where a forged message could have arrived, the attacker then
publishes a marker on its own topic over the same connection: once the fleet stored the marker, anything sent
before it would have been stored too."""

from __future__ import annotations

import json

from fleet.credentials import FLEET_USER
from fleet.protocol import Desired, ReleaseSpec, Reported, StageSpec, encode
from tests.attacks.conftest import Rig
from tests.attacks.mqtt_helpers import Peer, wait_until
from tests.fleet.devicesim import batch, predictions, publish_until_acked


def _marker(rig: Rig, peer: Peer, device: str) -> None:
    """Publish one record on `device`'s own topic and wait until the fleet stored it."""
    rec = predictions(device, 1, seed=hash(device) & 0xFFFF)[0]
    assert peer.publish(rig.topics.device(device, "predictions"), batch(device, "predictions", [rec]))
    assert wait_until(lambda: rig.fleet.store.predictions_by_id(device, [rec["id"]]), 10), "marker not stored"


def test_connections_without_valid_credentials_are_refused(rig: Rig, attack):
    url = rig.url
    for name, user, password in (("anonymous connection", None, None),
                                 ("wrong password", "cam-a", "not-the-password"),
                                 ("unknown user", "intruder", "whatever"),
                                 ("empty password", "cam-a", ""),
                                 ("the fleet's user with a guessed password", FLEET_USER, "shadowline")):
        with attack(f"{rig.kind}: {name}"):
            p = Peer(url, f"x-{name}", user, password)
            try:
                assert not p.connected(), f"{name} was accepted"
            finally:
                p.close()


def test_a_device_stays_in_its_own_subtree(rig: Rig, attack):
    t = rig.topics
    a = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
    assert a.connected()
    try:
        with attack(f"{rig.kind}: forge predictions as another device"):
            forged = predictions("cam-b", 3, seed=1)
            a.publish(t.device("cam-b", "predictions"), batch("cam-b", "predictions", forged))
            _marker(rig, a, "cam-a")
            assert not rig.fleet.store.predictions_by_id("cam-b", [r["id"] for r in forged])
        with attack(f"{rig.kind}: forge another device's reported state"):
            rep = Reported(device="cam-b", active="evil@1", desired_revision=99, activation={"state": "committed"})
            a.publish(t.device("cam-b", "reported"), encode(rep), retain=True)
            _marker(rig, a, "cam-a")
            row = rig.fleet.store.get("devices", "cam-b")
            assert row is None or row["active"] != "evil@1"
        with attack(f"{rig.kind}: publish on the fleet's alert topic"):
            watcher = Peer(rig.url, "observer", "observer", rig.password("observer"))
            try:
                assert watcher.connected()
                watcher.subscribe(t.fleet("alerts"), t.device("cam-a", "predictions"))
                a.publish(t.fleet("alerts"), b'{"forged": true}')
                _marker(rig, a, "cam-a")
                assert wait_until(lambda: any("/cam-a/" in m[0] for m in watcher.got), 10)
                assert not [m for m in watcher.got if m[0] == t.fleet("alerts")]
            finally:
                watcher.close()
    finally:
        a.close()


def test_desired_states_and_commands_stay_the_fleets(rig: Rig, attack, bundles):
    t, fleet = rig.topics, rig.fleet
    info = fleet.registry.push(bundles["squeezenet"])
    fleet.releases.create(ReleaseSpec(name="sq", stages=[StageSpec(role="verify", bundle=info["id"])]))
    fleet.desired.set("cam-b", "sq@1")
    a = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
    assert a.connected()
    try:
        forged = Desired(device="cam-b", revision=1_000_000_000, release=ReleaseSpec(
            name="evil", stages=[StageSpec(role="verify", bundle=info["id"])]), artifacts=[])
        with attack(f"{rig.kind}: retained desired state for another device"):
            a.publish(t.device("cam-b", "desired"), encode(forged), retain=True)
            a.publish(t.device("cam-a", "desired"), encode(forged.model_copy(update={"device": "cam-a"})), retain=True)
            _marker(rig, a, "cam-a")
            b = Peer(rig.url, "cam-b", "cam-b", rig.password("cam-b"))
            try:
                assert b.connected()
                b.subscribe(t.device("cam-b", "desired"))
                assert wait_until(lambda: b.got, 10), "cam-b never got its retained desired state"
                assert all(json.loads(p)["release"]["name"] == "sq" for _, p, _ in b.got)
            finally:
                b.close()
        with attack(f"{rig.kind}: read another device's desired state and commands"):
            spy = Peer(rig.url, "cam-a-spy", "cam-a", rig.password("cam-a"))
            try:
                assert spy.connected()
                spy.subscribe(t.device("cam-b", "desired"), t.device("cam-b", "cmd"), f"{t.prefix}/#",
                              f"{t.prefix}/dev/+/desired", f"{t.prefix}/dev/+/reported", "#")
                _marker(rig, spy, "cam-a")
                fleet.publish(t.device("cam-b", "cmd"), b'{"schema": "shadowline.cmd"}', False)
                fleet.desired.set("cam-b", "sq@1")
                _marker(rig, spy, "cam-a")
                leaked = [topic for topic, _, _ in spy.got if "/cam-a/" not in topic]
                assert not leaked, leaked
            finally:
                spy.close()
    finally:
        a.close()


def test_client_id_takeover_of_the_fleet_session_loses_nothing(rig: Rig, attack):
    """Issue 12: with cam-a's own password and the fleet's client id, Mosquitto handed cam-a the fleet's session
    and 23 of 120 records were lost. Now the client id is the user name: the attacker can only be cam-a."""
    t, fleet = rig.topics, rig.fleet
    b = Peer(rig.url, "cam-b", "cam-b", rig.password("cam-b"))
    assert b.connected()
    sent: list[dict] = []
    try:
        with attack(f"{rig.kind}: client-id takeover of the fleet's session (cam-a's password)") as a:
            for round_ in range(4):
                for clean in (True, False):
                    evil = Peer(rig.url, rig.service.config.client_id, "cam-a", rig.password("cam-a"), clean=clean)
                    evil.connected()
                    recs = predictions("cam-b", 30, seed=round_ * 2 + clean)
                    publish_until_acked(b.c, t.device("cam-b", "predictions"), batch("cam-b", "predictions", recs))
                    sent += recs
                    evil.close()
            ids = [r["id"] for r in sent]
            wait_until(lambda: len(fleet.store.predictions_by_id("cam-b", ids)) == len(ids), 20)
            a.lost(len(ids) - len(fleet.store.predictions_by_id("cam-b", ids)))
            assert rig.service.mqtt is not None and rig.service.mqtt.connected
        with attack(f"{rig.kind}: failed logins with the fleet's client id while devices stream") as a:
            more: list[dict] = []
            for round_ in range(3):
                evil = Peer(rig.url, rig.service.config.client_id, FLEET_USER, "wrong", clean=True)
                assert not evil.connected()
                recs = predictions("cam-b", 30, seed=100 + round_)
                publish_until_acked(b.c, t.device("cam-b", "predictions"), batch("cam-b", "predictions", recs))
                more += recs
                evil.close()
            ids = [r["id"] for r in more]
            wait_until(lambda: len(fleet.store.predictions_by_id("cam-b", ids)) == len(ids), 20)
            a.lost(len(ids) - len(fleet.store.predictions_by_id("cam-b", ids)))
    finally:
        b.close()


def test_a_device_cannot_take_over_another_devices_session(rig: Rig, attack):
    t = rig.topics
    b = Peer(rig.url, "cam-b", "cam-b", rig.password("cam-b"), clean=False)
    assert b.connected()
    b.subscribe(t.device("cam-b", "cmd"))
    _marker(rig, b, "cam-b")
    try:
        with attack(f"{rig.kind}: client-id takeover of another device's session"):
            evil = Peer(rig.url, "cam-b", "cam-a", rig.password("cam-a"), clean=True)
            evil.connected()
            evil.subscribe(t.device("cam-b", "cmd"))
            _marker(rig, evil, "cam-a")
            rig.fleet.publish(t.device("cam-b", "cmd"), b'{"hello": "cam-b"}', False)
            assert wait_until(lambda: any(p == b'{"hello": "cam-b"}' for _, p, _ in b.got), 10)
            assert b.c.is_connected(), "cam-b was knocked off by cam-a"
            assert not [m for m in evil.got if "/cam-b/" in m[0]]
            evil.close()
    finally:
        b.close()


def test_last_will_outside_ones_subtree(rig: Rig, attack, bundles):
    t, fleet = rig.topics, rig.fleet
    info = fleet.registry.push(bundles["squeezenet"])
    fleet.releases.create(ReleaseSpec(name="sq", stages=[StageSpec(role="verify", bundle=info["id"])]))
    fleet.desired.set("cam-c", "sq@1")
    with attack(f"{rig.kind}: retained last will on another device's desired state"):
        forged = b'{"schema": "shadowline.desired", "release": {"name": "evil"}}'
        evil = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"), will=(t.device("cam-c", "desired"), forged, True))
        evil.connected()
        evil.kill()
        c = Peer(rig.url, "cam-c", "cam-c", rig.password("cam-c"))
        try:
            assert c.connected()
            c.subscribe(t.device("cam-c", "desired"))
            _marker(rig, c, "cam-c")
            assert wait_until(lambda: c.got, 10)
            assert all(json.loads(p)["release"]["name"] == "sq" for _, p, _ in c.got), c.got
        finally:
            c.close()
    with attack(f"{rig.kind}: last will forging another device's predictions"):
        forged_recs = predictions("cam-c", 2, seed=77)
        evil = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"),
                    will=(t.device("cam-c", "predictions"), batch("cam-c", "predictions", forged_recs), False))
        evil.connected()
        evil.kill()
        m = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
        try:
            assert m.connected()
            _marker(rig, m, "cam-a")
            assert not fleet.store.predictions_by_id("cam-c", [r["id"] for r in forged_recs])
        finally:
            m.close()


def test_retained_record_batches_are_not_replayed(rig: Rig, attack, tmp_path, config):
    """A retained prediction batch would be handed to every new subscriber: a restarted fleet, another ingest
    worker. It must enter the store at most once, live, and never again."""
    from fleet.service import FleetService

    t = rig.topics
    a = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
    assert a.connected()
    try:
        with attack(f"{rig.kind}: retained poisoning of a record topic"):
            recs = predictions("cam-a", 5, seed=5)
            a.publish(t.device("cam-a", "predictions"), batch("cam-a", "predictions", recs), retain=True)
            _marker(rig, a, "cam-a")
            if rig.kind == "mosquitto":
                # Mosquitto keeps it: a second fleet instance on a fresh store subscribes now and must not take it
                store = rig.creds.store()
                store.add("shadowline-fleet-2", "fleet")
                store.save()
                rig.mosquitto.reload()
                second = FleetService(config.model_copy(update={
                    "data_dir": tmp_path / "fresh", "broker_url": rig.url, "mqtt_username": "shadowline-fleet-2",
                    "mqtt_password": store.users["shadowline-fleet-2"].password, "monitor_interval_s": 0})).start()
                try:
                    assert wait_until(lambda: second.fleet.store.refused(), 10), "the replay was not refused"
                    assert second.fleet.store.refused()[0]["reason"] == "retained"
                    assert not second.fleet.store.predictions_by_id("cam-a", [r["id"] for r in recs])
                finally:
                    second.stop()
            a.close()
            # and whatever broker: a late subscriber is handed no retained record batch (the fleet cleared it,
            # or the embedded broker never kept it)
            late = Peer(rig.url, "observer", "observer", rig.password("observer"))
            assert late.connected()
            late.subscribe(t.device("cam-a", "predictions"))
            mark = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
            assert mark.connected()
            _marker(rig, mark, "cam-a")
            mark.close()
            assert wait_until(lambda: late.got, 10)
            assert not [m for m in late.got if m[2] and m[1]], "a retained record batch was replayed"
            late.close()
    finally:
        a.close()


def test_oversized_packet_is_refused(rig: Rig, attack):
    t = rig.topics
    with attack(f"{rig.kind}: a 20 MB publish"):
        a = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
        assert a.connected()
        big = b'{"x": "' + b"a" * (20 << 20) + b'"}'
        acked = a.publish(t.device("cam-a", "predictions"), big, wait=10)
        a.close()
        assert not acked or rig.fleet.ingest.stats.malformed >= 1
        ok = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
        try:
            assert ok.connected(), "the broker did not survive"
            _marker(rig, ok, "cam-a")
        finally:
            ok.close()


def test_revoked_and_rotated_credentials(rig: Rig, attack):
    store = rig.creds.store()
    c = Peer(rig.url, "cam-c", "cam-c", rig.password("cam-c"))
    assert c.connected()
    old_b = rig.password("cam-b")
    store.revoke("cam-c")
    store.rotate("cam-b")
    store.save()
    if rig.mosquitto is not None:
        rig.mosquitto.reload()
    with attack(f"{rig.kind}: a revoked device stays connected"):
        assert wait_until(lambda: not c.c.is_connected(), 10), "cam-c still connected after the revocation"
        c.close()
        again = Peer(rig.url, "cam-c", "cam-c", rig.password("cam-c"))
        assert not again.connected()
        again.close()
    with attack(f"{rig.kind}: a rotated-out password"):
        old = Peer(rig.url, "cam-b", "cam-b", old_b)
        assert not old.connected()
        old.close()
        new = Peer(rig.url, "cam-b", "cam-b", store.users["cam-b"].password)
        assert new.connected()
        new.close()
    with attack(f"{rig.kind}: other devices locked out by a credentials change"):
        a = Peer(rig.url, "cam-a", "cam-a", rig.password("cam-a"))
        try:
            assert a.connected(), "cam-a lost access when cam-c was revoked"
            _marker(rig, a, "cam-a")
        finally:
            a.close()
