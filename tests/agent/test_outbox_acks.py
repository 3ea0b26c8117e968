"""The outbox with fleet acks (the default) against a real Mosquitto and real SQLite: a row the broker acknowledged
waits, persisted as such, for the fleet's ack of its record id, and only then leaves; unacknowledged rows are sent
again after the timeout and after a reconnection; the window counts rows awaiting the fleet; unknown ids are
ignored, malformed acks refused. Here a paho client plays the fleet's part (tests/fleet/test_acks.py has the real
fleet sending them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge import outbox
from edge.agent.config import AgentConfig
from edge.agent.headless import HeadlessHost
from edge.agent.runtime import Agent
from fleet.protocol import Ack, ProtocolError, Topics, encode
from tests.agent.mqtt_helpers import Collector, connect
from tests.agent.test_outbox import DURABLE, device_client, fill, rows
from tests.conftest import Mosquitto

T = Topics()


def wired(db: Path, client: mqtt.Client, **kw) -> outbox.Publisher:
    """A publisher with fleet acks on `client`, wired as the agent wires it: PUBACKs, its acks subscription and
    `reconnected()` on every connection, acks handed to `on_ack`."""
    p = outbox.Publisher(db, client, T, "dev-1", poll_s=0.05, **kw)
    client.on_publish = p.on_publish

    def on_connect(c, u, flags, reason, props) -> None:
        if p.subscriptions():  # none without fleet acks (paho refuses an empty list)
            c.subscribe(p.subscriptions())
        p.reconnected()

    client.on_connect = on_connect
    client.on_message = lambda c, u, msg: p.on_ack(msg.topic, bytes(msg.payload))
    return p


def ack(fleet: mqtt.Client, stored: list[str] = (), refused: list[str] = (), device: str = "dev-1") -> None:
    fleet.publish(T.device(device, "acks"), encode(Ack(device=device, stored=list(stored), refused=list(refused))),
                  qos=1).wait_for_publish(5)


def ack_until(fleet: mqtt.Client, col: Collector, cond, timeout: float) -> bool:
    """Play a fleet that keeps up: acknowledge everything collected so far until `cond()` holds."""
    def step() -> bool:
        with col.lock:
            seen = list(col.ids)
        ack(fleet, stored=seen)
        return bool(cond())
    return Collector.wait(step, timeout, step=0.2)


@contextmanager
def rig(db: Path, port: int, hub=None, **kw) -> Iterator[tuple[Collector, mqtt.Client, outbox.Publisher]]:
    """A collector that sees the batches and never acknowledges, a paho client playing the fleet, and a publisher
    with fleet acks wired on a connected device client (started, or driven by `hub`'s wake-ups); all stopped after."""
    col = Collector(port, ack=False)
    fleet = connect(port, "fleet-standin")
    client = device_client(port)
    pub = wired(db, client, **kw)
    if hub is not None:
        pub.poll_s = 3600.0  # the hub never polls; only wake-ups move the pump
    client.loop_start()
    try:
        if hub is None:
            pub.start()
        else:
            assert col.wait(client.is_connected, 10)
            pub.start(hub)
        yield col, fleet, pub
    finally:
        pub.stop()
        if hub is not None:
            hub.stop()
        client.loop_stop()
        fleet.loop_stop()
        col.close()


def puback_marked(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return outbox.awaiting(conn)


def test_rows_await_the_fleet_after_puback_and_leave_on_its_ack(tmp_path, mosquitto):
    db = tmp_path / "device.db"
    ids = fill(db, 30)
    with rig(db, mosquitto.port, batch_size=10, ack_timeout_s=60) as (col, fleet, pub):
        # pending -> in flight -> awaiting the fleet: delivered, acknowledged by the broker, still in the table
        assert col.wait(lambda: set(col.ids) == set(ids), 10)
        assert col.wait(lambda: puback_marked(db) == 30, 5), "PUBACKed rows are marked as awaiting the fleet"
        assert rows(db) == 30 and pub.stats.records == 0 and not pub.drained()
        assert len(pub._inflight) == 3 and all(f.acked_at is not None for f in pub._inflight)
        # the fleet stored the first batch: those rows go, the other two batches still hold the window
        ack(fleet, stored=ids[:10])
        assert col.wait(lambda: rows(db) == 20, 5)
        assert pub.stats.records == 10 and pub.stats.batches == 1 and len(pub._inflight) == 2
        # a duplicate ack and an id this device never had: ignored, counted
        ack(fleet, stored=ids[:10] + ["not-ours"])
        assert col.wait(lambda: pub.stats.unknown_acks == 11, 5)
        assert rows(db) == 20
        # refused by the fleet's validation: never to be stored, so not sent again either
        ack(fleet, refused=ids[10:20])
        assert col.wait(lambda: rows(db) == 10, 5)
        assert pub.stats.refused == 10
        # malformed acks and acks for another device are refused with a ProtocolError; nothing is deleted
        topic = T.device("dev-1", "acks")
        for bad in (b"{not json", b'{"schema": "shadowline.ack", "version": 1}',
                    encode(Ack(device="dev-2", stored=ids[20:])),
                    encode(Ack(device="dev-1", stored=ids[20:])).replace(b'"version":1', b'"version":9')):
            with pytest.raises(ProtocolError):
                pub.on_ack(topic, bad)
        assert rows(db) == 10
        ack(fleet, stored=ids[20:])
        assert col.wait(pub.drained, 5)
        assert pub.stats.records == 30 and pub.stats.batches == 3 and pub.stats.resent == 0
        assert max(col.ids.values()) == 1, "nothing was sent twice"


def test_rows_without_a_fleet_ack_are_sent_again_after_the_timeout(tmp_path, mosquitto):
    db = tmp_path / "device.db"
    ids = fill(db, 20)
    with rig(db, mosquitto.port, batch_size=10, ack_timeout_s=1.0) as (col, fleet, pub):
        assert col.wait(lambda: set(col.ids) == set(ids), 10)
        # the fleet never answered: after the timeout the same records are published again, and again
        assert col.wait(lambda: min(col.ids[i] for i in ids) >= 2, 10), "sent again after the timeout"
        # the resend is counted just after its publish, which the collector may already have seen
        assert col.wait(lambda: pub.stats.resent >= 2, 5)
        assert rows(db) == 20
        ack(fleet, stored=ids)
        assert col.wait(pub.drained, 5)


def test_on_a_hub_the_timeout_wakes_the_publisher(tmp_path, mosquitto):
    """Many agents per process (edge.agent.hub.Hub): nothing polls, so the ack timeout is a hub timer."""
    from edge.agent.hub import Hub

    db = tmp_path / "device.db"
    ids = fill(db, 10)
    with rig(db, mosquitto.port, hub=Hub(1, name="acks").start(), batch_size=10, ack_timeout_s=0.5) as (col, fleet, pub):
        assert col.wait(lambda: min(col.ids[i] for i in ids) >= 3, 10), "sent again at each timeout"
        # the resend is counted just after its publish, which the collector may already have seen
        assert col.wait(lambda: pub.stats.resent >= 2, 5)
        assert rows(db) == 10
        ack(fleet, stored=ids)
        assert col.wait(pub.drained, 5)


def test_rows_awaiting_the_fleet_are_sent_again_after_the_broker_died(tmp_path):
    """kill -9 of the broker after its PUBACK: the device sends what the fleet has not acknowledged again as soon as
    it is reconnected, long before the timeout."""
    broker = Mosquitto(tmp_path / "broker", DURABLE).start()
    db = tmp_path / "device.db"
    ids = fill(db, 20)
    col = Collector(broker.port, ack=False)
    client = device_client(broker.port)
    pub = wired(db, client, batch_size=10, ack_timeout_s=600)
    pub.start()
    client.loop_start()
    fleet = None
    try:
        assert col.wait(lambda: set(col.ids) == set(ids) and puback_marked(db) == 20, 10)
        broker.kill()
        assert col.wait(lambda: not client.is_connected(), 10)
        broker.start()
        assert col.wait(lambda: min(col.ids[i] for i in ids) >= 2, 20), "sent again after the reconnection"
        # the resend is counted just after its publish, which the collector may already have seen
        assert col.wait(lambda: pub.stats.resent == 2, 5), pub.stats
        assert pub.stats.resent == 2 and rows(db) == 20
        fleet = connect(broker.port, "fleet-standin")
        ack(fleet, stored=ids)
        assert col.wait(pub.drained, 5)
    finally:
        pub.stop()
        client.loop_stop()
        if fleet is not None:
            fleet.loop_stop()
        col.close()
        broker.stop()


def test_the_window_counts_rows_awaiting_the_fleet_and_the_budget_keeps_them(tmp_path, mosquitto):
    db = tmp_path / "device.db"
    ids = fill(db, 100)
    with rig(db, mosquitto.port, batch_size=10, window=3, ack_timeout_s=600) as (col, fleet, pub):
        assert col.wait(lambda: len(col.ids) == 30 and puback_marked(db) == 30, 10)
        assert not col.wait(lambda: len(col.ids) > 30, 1.0), "no more batches while 3 await the fleet"
        # over the budget: rows awaiting the fleet are kept like rows in flight; pending ones are dropped
        with sqlite3.connect(db) as conn:
            one = conn.execute("SELECT MAX(size) FROM outbox").fetchone()[0]
        with pub._db_lock:
            pub.budget_bytes = 40 * one
            pub._enforce()
        with sqlite3.connect(db) as conn:
            left = {r[0] for r in conn.execute("SELECT id FROM outbox")}
        assert set(ids[:30]) <= left and len(left) <= 45 and pub.stats.dropped["predictions"] >= 55
        # the fleet catches up: the window opens again and the rest flows
        assert ack_until(fleet, col, pub.drained, 15)
        assert set(col.ids) == left


def _agent(tmp_path: Path, broker: Mosquitto, keys, **kw) -> Agent:
    config = AgentConfig(broker_url=broker.url, releases_dir=tmp_path / "dev-1" / "releases",
                         reconnect_min_s=0.1, reconnect_max_s=0.5, publish_interval_s=0.05,
                         fleet_keys=[keys["control_public"]], **kw)
    host = HeadlessHost("dev-1", tmp_path / "dev-1")
    return Agent(config, host)


def test_agent_deletes_on_the_fleet_ack_and_survives_malformed_ones(tmp_path, mosquitto, keys):
    col = Collector(mosquitto.port, ack=False)
    fleet = connect(mosquitto.port, "fleet-standin")
    agent = _agent(tmp_path, mosquitto, keys)
    db = agent.host.db_path
    ids = fill(db, 25)
    agent.start()
    try:
        assert col.wait(lambda: set(ids) <= set(col.ids), 10)
        assert col.wait(lambda: puback_marked(db) >= 25, 5)
        fleet.publish(T.device("dev-1", "acks"), b'{"schema": "shadowline.ack", "stored": 5}', qos=1)
        assert col.wait(lambda: agent.bad_messages == 1, 5), "a malformed ack is counted, logged, reported"
        assert col.wait(lambda: col.events("dev-1", "bad_message"), 5)
        assert rows(db) >= 25 and agent.connected.is_set()
        # the fleet acknowledges everything it got (the bad_message event included): the outbox empties
        assert ack_until(fleet, col, lambda: rows(db) == 0, 10), rows(db)
        assert agent.publisher.stats.records >= 25 and agent.bad_messages == 1
    finally:
        agent.stop()
        fleet.loop_stop()
        col.close()


def test_agent_without_fleet_acks_deletes_on_puback_as_before(tmp_path, mosquitto, keys):
    col = Collector(mosquitto.port, ack=False)
    agent = _agent(tmp_path, mosquitto, keys, outbox_fleet_acks=False)
    db = agent.host.db_path
    ids = fill(db, 25)
    agent.start()
    try:
        assert agent.publisher.subscriptions() == []  # it does not even subscribe to acks
        assert col.wait(lambda: set(ids) <= set(col.ids), 10)
        assert col.wait(lambda: rows(db) == 0, 5), "deleted on PUBACK, no fleet ack needed"
        assert puback_marked(db) == 0 and agent.publisher.stats.records >= 25
    finally:
        agent.stop()
        col.close()
