"""The outbox publisher against a real Mosquitto without fleet acks (`fleet_acks=False`, the mode for a fleet older
than acks): batches over QoS 1, rows deleted only after PUBACK, the broker killed mid-stream, the disk budget's
overflow policy. tests/agent/test_outbox_acks.py has the default mode, rows deleted on the fleet's ack."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import paho.mqtt.client as mqtt

from edge import outbox
from fleet.protocol import MetricsRecord, PredictionRecord, ReviewRecord, Topics
from tests.agent.mqtt_helpers import Collector
from tests.conftest import Mosquitto


def fill(db: Path, n: int, kind: str = "predictions", device: str = "dev-1") -> list[str]:
    ids = []
    with sqlite3.connect(db) as conn:
        outbox.ensure_schema(conn)
        for i in range(n):
            if kind == "predictions":
                rec = PredictionRecord(device=device, source=f"folder:img{i}.png", release="pcb-screen",
                                       revision=1, mode="shadow", decision="pass", top_label="Normal",
                                       top_score=0.9)
            elif kind == "reviews":
                rec = ReviewRecord(prediction_id=f"p{i}", device=device, inspector="ana", verdict="confirm",
                                   override=False, model_decision="pass", release="pcb-screen", revision=1)
            else:
                rec = MetricsRecord(device=device, release="pcb-screen", revision=1, window_s=60, values={"n": i})
            outbox.enqueue(conn, kind, rec.model_dump(mode="json"))
            ids.append(rec.id)
    return ids


def device_client(port: int, device: str = "dev-1") -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, clean_session=False)
    c.reconnect_delay_set(0.1, 0.5)
    c.connect_async("127.0.0.1", port)
    return c


def publisher(db: Path, client: mqtt.Client, **kw) -> outbox.Publisher:
    p = outbox.Publisher(db, client, Topics(), "dev-1", poll_s=0.05, **{"fleet_acks": False, **kw})
    client.on_publish = p.on_publish
    return p


def rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def outbox_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM outbox")}


def test_batches_delivered_and_deleted(tmp_path, mosquitto):
    db = tmp_path / "device.db"
    ids = fill(db, 1000) + fill(db, 30, "reviews")
    col = Collector(mosquitto.port, ack=False)
    client = device_client(mosquitto.port)
    pub = publisher(db, client, batch_size=100)
    pub.start()
    client.loop_start()
    try:
        assert col.wait(lambda: len(col.ids) == len(ids), 20)
        assert col.wait(pub.drained, 5)
        assert set(col.ids) == set(ids) and max(col.ids.values()) == 1
        assert rows(db) == 0
        assert pub.stats.batches == 11 and pub.stats.records == 1030
        assert {r["_kind"] for r in col.records.values()} == {"predictions", "reviews"}
    finally:
        pub.stop()
        client.loop_stop()
        col.close()


def test_rows_stay_until_acknowledged(tmp_path, mosquitto):
    """A broker that took the batches but has not acknowledged them (frozen with SIGSTOP): every row stays in the
    table while its batch is in flight, and leaves once the PUBACK comes (SIGCONT)."""
    db = tmp_path / "device.db"
    fill(db, 50)
    client = device_client(mosquitto.port)
    pub = publisher(db, client, batch_size=10, window=8)
    client.loop_start()
    try:
        assert Collector.wait(client.is_connected, 10)
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        pub.start()
        # the whole table is in flight (5 batches of 10, the window holds 8), none acknowledged
        assert Collector.wait(lambda: sum(len(f.seqs) for f in pub._inflight) == 50, 10), "batches sent"
        assert rows(db) == 50 and pub.stats.records == 0
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
        assert Collector.wait(pub.drained, 10), f"{rows(db)} rows left after the PUBACKs"
        assert pub.stats.records == 50 and pub.stats.batches == 5
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
        pub.stop()
        client.loop_stop()


# Two broker settings make a PUBACK durable across a kill -9: Mosquitto saves its state only every 30 minutes by
# default (autosave_on_changes saves after every change instead), and started as root it drops to the `mosquitto`
# user, which cannot write its persistence file into a root-owned 0700 test directory (then it silently runs
# without persistence and forgets every queued message on restart; tests.conftest now adds `user root` itself).
DURABLE = "allow_anonymous true\nautosave_interval 1\nautosave_on_changes true\nuser root\n"


def test_broker_restart_loses_nothing_and_a_kill_at_most_the_unwritten_window(tmp_path):
    """Without fleet acks (the mode before them): a clean broker restart loses nothing; a kill -9 loses at most
    what the broker had acknowledged and not yet written or delivered (the mode's documented window)."""
    broker = Mosquitto(tmp_path / "broker", DURABLE).start()
    db = tmp_path / "device.db"
    ids = fill(db, 20000)
    col = Collector(broker.port, ack=False)
    client = device_client(broker.port)
    pub = publisher(db, client, batch_size=50, window=4)
    pub.start()
    client.loop_start()
    try:
        assert col.wait(lambda: len(col.ids) >= 2000, 20), "streaming started"
        acked_before_restart = set(ids) - outbox_ids(db)  # a clean stop saves every one of these: none may be lost
        broker.stop()  # a clean broker restart mid-stream
        assert rows(db) > 0, "the restart happened mid-stream"
        # offline: the device notices, and its rows stay put while no broker acknowledges anything
        assert col.wait(lambda: not client.is_connected(), 10), "the device noticed the broker went"
        assert rows(db) > 0
        broker.start()
        assert col.wait(lambda: len(col.ids) >= 8000, 30)
        # Mosquitto sends its PUBACK before it writes the message (docs/agent.md), and without fleet acks the device
        # deletes the row on the PUBACK: a kill -9 in that window may lose what was acknowledged and not yet
        # delivered, at most the publisher's window of batches. Those records are known at the kill: neither
        # delivered nor still in the table. Everything else must arrive.
        with col.lock:
            delivered_at_kill = set(col.ids)
        unsettled_at_kill = set(ids) - delivered_at_kill - outbox_ids(db)
        broker.kill()  # kill -9 mid-stream
        assert rows(db) > 0
        assert col.wait(lambda: not client.is_connected(), 10), "the device noticed the broker died"
        broker.start()
        assert col.wait(pub.drained, 60), f"{rows(db)} rows left"
        col.wait(lambda: set(col.ids) >= set(ids), 10)
        missing = set(ids) - set(col.ids)
        assert not missing & acked_before_restart, f"lost at the clean restart: {len(missing & acked_before_restart)}"
        assert missing <= unsettled_at_kill and len(missing) <= 4 * 50, f"missing {len(missing)}"
        assert set(col.ids) <= set(ids)
        dupes = sum(n - 1 for n in col.ids.values())
        # QoS 1 is at-least-once: a batch in flight at the kill may arrive twice; ingest deduplicates by id
        assert dupes <= 2 * 4 * 50, dupes
    finally:
        pub.stop()
        client.loop_stop()
        col.close()
        broker.stop()


def test_overflow_policy_drops_oldest_cheapest_first_and_counts(tmp_path, mosquitto):
    db = tmp_path / "device.db"
    metrics = fill(db, 100, "metrics")
    preds = fill(db, 400)
    reviews = fill(db, 50, "reviews")
    with sqlite3.connect(db) as conn:
        sizes = dict(conn.execute("SELECT kind, SUM(size) FROM outbox GROUP BY kind").fetchall())
    # room for the reviews and half of the predictions: all metrics and the oldest predictions must go
    budget = sizes["reviews"] + sizes["predictions"] // 2
    overflow: list[dict] = []
    client = device_client(mosquitto.port)
    pub = publisher(db, client, budget_bytes=budget, on_overflow=overflow.append)
    with sqlite3.connect(db) as conn:
        # the policy on its own (no publishing yet): deterministic counts
        dropped = outbox.enforce_budget(conn, budget)
        assert dropped["metrics"] == 100 and 195 <= dropped["predictions"] <= 205 and "reviews" not in dropped
        assert outbox.losses(conn) == dropped
        kept = {r[0] for r in conn.execute("SELECT id FROM outbox WHERE kind = 'predictions'")}
        assert kept == set(preds[-len(kept):]), "the oldest predictions were dropped"
        assert conn.execute("SELECT COALESCE(SUM(size),0) FROM outbox").fetchone()[0] <= budget
    # more rows while offline: the running publisher enforces the budget itself and reports it
    fill(db, 300)
    col = Collector(mosquitto.port, ack=False)
    pub.start()
    client.loop_start()
    try:
        assert col.wait(lambda: bool(overflow), 5)
        assert col.wait(pub.drained, 20)
        with sqlite3.connect(db) as conn:
            total = outbox.losses(conn)
        assert total["predictions"] == dropped["predictions"] + sum(o.get("predictions", 0) for o in overflow)
        # every record delivered or counted as lost (the subscriber may trail the broker's PUBACKs a little)
        assert col.wait(lambda: len(col.ids) + sum(total.values()) == 100 + 400 + 50 + 300, 10)
        delivered = set(col.ids)
        assert set(reviews) <= delivered and not (set(metrics) & delivered)
    finally:
        pub.stop()
        client.loop_stop()
        col.close()
