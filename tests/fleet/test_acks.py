"""The fleet's commit acknowledgements on a real Mosquitto, on both store backends: after a group's transaction
committed, the service (and an ingest worker on a shared subscription) publishes to each device an `Ack` naming the
record ids it stored (a redelivered batch again: duplicates are stored) and those validation refused."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt

from fleet.acks import acks_of
from fleet.config import FleetConfig
from fleet.ingest import Prepared
from fleet.ingest_worker import IngestWorker
from fleet.protocol import ACK_MAX_IDS, Ack, PredictionRecord, Topics, decode
from fleet.service import FleetService
from tests.fleet.devicesim import batch, client, predictions, publish_until_acked, wait_for

T = Topics()


class AckReader:
    """A device's side: subscribed to its own acks topic, collecting every `Ack`."""

    def __init__(self, url: str, device: str) -> None:
        self.device = device
        self.acks: list[Ack] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = client(url, f"acks-{device}")
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        wait_for(self.c.is_connected, 10, f"{device} connected")
        self.c.subscribe(T.device(device, "acks"), qos=1)
        assert self.subscribed.wait(5)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.acks.append(decode(msg.topic, msg.payload, Ack))

    def ids(self, field: str = "stored") -> list[str]:
        with self.lock:
            return [i for a in self.acks for i in getattr(a, field)]

    def send(self, records: list[dict]) -> None:
        publish_until_acked(self.c, T.device(self.device, "predictions"), batch(self.device, "predictions", records))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _exchange(url: str) -> None:
    a, b = AckReader(url, "dev-a"), AckReader(url, "dev-b")
    try:
        first = predictions("dev-a", 5, seed=1)
        a.send(first)
        wait_for(lambda: sorted(a.ids()) == sorted(r["id"] for r in first), 20, "the ack of dev-a's batch")
        assert all(x.device == "dev-a" and x.schema_id == "shadowline.ack" for x in a.acks)
        # the same batch again (a device that missed the ack): stored once, acknowledged again
        a.send(first)
        wait_for(lambda: len(a.ids()) == 10, 20, "the ack of the redelivery")
        assert sorted(a.ids()) == sorted(2 * [r["id"] for r in first]) and not a.ids("refused")
        # one record validation refuses (older than max_age_days): acknowledged as refused, the rest as stored
        old = PredictionRecord.model_validate({**predictions("dev-a", 1, seed=2)[0], "created_at": (
            datetime.now(timezone.utc) - timedelta(days=40)).isoformat(timespec="milliseconds")})
        mixed = [*predictions("dev-a", 2, seed=3), old.model_dump(mode="json")]
        a.send(mixed)
        wait_for(lambda: a.ids("refused") == [old.id], 20, "the refusal acknowledged")
        assert set(a.ids()) == {r["id"] for r in first + mixed[:2]}
        # dev-b's own batch: only dev-b hears of it
        mine = predictions("dev-b", 3, seed=4)
        b.send(mine)
        wait_for(lambda: sorted(b.ids()) == sorted(r["id"] for r in mine), 20, "dev-b's ack")
        assert not set(b.ids()) & set(a.ids()) and len(a.ids()) == 12
    finally:
        a.close()
        b.close()


def test_the_service_acknowledges_what_it_committed(mosquitto, config: FleetConfig):
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "client_id": "fleet-acks"})).start()
    try:
        _exchange(mosquitto.url)
        assert svc.fleet.store.count("predictions") == 10
        assert svc.fleet.ingest.stats.duplicates == 5 and svc.fleet.ingest.stats.refused == 1
    finally:
        svc.stop()


def test_an_ingest_worker_on_a_shared_subscription_acknowledges_too(mosquitto, config: FleetConfig):
    cfg = config.model_copy(update={"broker_url": mosquitto.url, "client_id": "fleet-acks",
                                    "ingest_share_group": "acks", "ingest_in_service": False})
    svc = FleetService(cfg).start()  # creates the store; leaves the record topics to the worker
    worker = IngestWorker(cfg, "w1").start()
    try:
        _exchange(mosquitto.url)
        assert worker.ingest.stats.records == 10 and svc.fleet.ingest.stats.records == 0
    finally:
        worker.stop()
        svc.stop()


def test_acks_name_only_messages_written_and_split_at_the_limit():
    recs = [PredictionRecord.model_validate(r) for r in predictions("dev-a", 3)]
    many = [PredictionRecord.model_validate(r) for r in predictions("dev-b", 1)] * (ACK_MAX_IDS + 5)
    topic_a, topic_b = T.device("dev-a", "predictions"), T.device("dev-b", "predictions")
    prepared = Prepared(messages=[None, None, None], ok=[True, False, True],
                        pending=[(0, topic_a, "predictions", recs[:2]), (1, topic_a, "predictions", recs[2:]),
                                 (2, topic_b, "predictions", many)],
                        refused_ids=[(0, topic_a, ["r-1"]), (1, topic_a, ["r-2"])])
    out = {}
    for topic, payload in acks_of(prepared, T):
        out.setdefault(topic, []).append(json.loads(payload))
    # message 1's insert failed: neither its stored nor its refused ids are acknowledged (the device resends it)
    assert out[T.device("dev-a", "acks")] == [{**out[T.device("dev-a", "acks")][0], "stored": [r.id for r in recs[:2]],
                                               "refused": ["r-1"]}]
    assert [len(a["stored"]) for a in out[T.device("dev-b", "acks")]] == [ACK_MAX_IDS, 5]
