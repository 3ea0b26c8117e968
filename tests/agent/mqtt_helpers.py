"""Test-side MQTT clients: a collector of device batches (what the fleet ingest would see) and a fleet stand-in
that publishes desired states and commands."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt

from fleet.protocol import Ack, Topics, encode


def connect(port: int, client_id: str, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.reconnect_delay_set(0.1, 0.5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


class Collector:
    """Subscribes to every device's batches, reported states and status with a persistent session. With `ack`
    (the default) it answers each batch as the fleet does once it stored it: an `Ack` of its record ids on the
    device's `acks` topic, so devices with fleet acks delete what it collected."""

    def __init__(self, port: int, prefix: str = "shadowline", client_id: str = "collector", ack: bool = True) -> None:
        self.topics = Topics(prefix)
        self.ack = ack
        self.ids: Counter[str] = Counter()
        self.records: dict[str, dict] = {}
        self.reported: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait(lambda: self.client.is_connected(), 5)

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if flags.session_present:
            return  # the broker kept our subscriptions and queue; re-subscribing is not needed
        client.subscribe([(self.topics.all_devices(k), 1) for k in
                          ("predictions", "reviews", "metrics", "alerts", "events", "reported", "status")])

    def _on_message(self, client, userdata, msg) -> None:
        device, kind = self.topics.parse(msg.topic)
        with self.lock:
            if kind == "status":
                self.status[device] = msg.payload.decode()
            elif kind == "reported":
                self.reported[device] = json.loads(msg.payload)
            else:
                records = json.loads(msg.payload)["records"]
                for r in records:
                    self.ids[r["id"]] += 1
                    self.records[r["id"]] = {**r, "_kind": kind}
                if self.ack:  # queued in paho, not waited for: this is paho's callback thread
                    client.publish(self.topics.device(device, "acks"),
                                   encode(Ack(device=device, stored=[r["id"] for r in records])), qos=1)

    def events(self, device: str, kind: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.records.values() if r["_kind"] == "events" and r["device"] == device
                    and (kind is None or r["kind"] == kind)]

    @staticmethod
    def wait(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(step)
        return cond()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
