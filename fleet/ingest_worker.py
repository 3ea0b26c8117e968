"""Consuming what devices send from MQTT with commit-before-PUBACK, in the service and in `shadowline fleet
ingest-worker` processes that share the record topics through an MQTT 5 shared subscription.

A message is acknowledged only after the transaction holding its records committed (paho's manual acks). A worker
killed at any moment leaves its messages unacknowledged: the broker keeps them in the worker's persistent session
and sends them again when it reconnects with the same client id (Mosquitto keeps them for that session; it does
not hand them to another member of the share group), and the store ignores what it already has by record id: 0
lost, 0 duplicated. So give each worker a stable `--worker-id` and let a supervisor restart it."""

from __future__ import annotations

import logging
import queue
import threading

import paho.mqtt.client as mqtt

from fleet.acks import acks_of
from fleet.broker import MqttClient
from fleet.config import FleetConfig
from fleet.devices import Devices
from fleet.ingest import Ingest, Prepared
from fleet.ingest_decode import DecoderPool
from fleet.protocol import RecordKind, Topics
from fleet.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

STATE_KINDS = ("status", "reported")
RECORD_KINDS: tuple[RecordKind, ...] = tuple(RecordKind)
DEFAULT_SHARE_GROUP = "shadowline-ingest"


def record_filters(topics: Topics, share_group: str | None) -> list[str]:
    """Subscription filters of the record topics, under `$share/<group>/` when shared."""
    return [f"$share/{share_group}/{topics.all_devices(k)}" if share_group else topics.all_devices(k)
            for k in RECORD_KINDS]


def state_filters(topics: Topics) -> list[str]:
    """The retained state topics (status, reported): never shared, every service instance reads them."""
    return [topics.all_devices(k) for k in STATE_KINDS]


class Consumer:
    """Drains an MQTT client's messages into `ingest` in groups (everything that arrived meanwhile, at most `group`
    messages), in two threads: this one decodes, validates and screens a group while the writer commits the one
    before it in one transaction and then sends their PUBACKs, in the order the messages came. So a message is
    still acknowledged only once its records are committed, and the CPU-heavy decoding overlaps the database's
    work (SQLite and the PostgreSQL driver release the GIL while the database works). A verdict whose prediction
    must be looked up waits until the groups before it are committed (`Ingest.before_lookup`)."""

    def __init__(self, ingest: Ingest, client: MqttClient, group: int, name: str = "ingest",
                 decode_processes: int = 0) -> None:
        self.ingest, self.client, self.group = ingest, client, group
        # batches of predictions decoded in processes of their own (fleet.ingest_decode), started with the threads
        self.decoders = DecoderPool(decode_processes, ingest.validator.limits) if decode_processes > 0 else None
        self.inbox: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        # prepared groups waiting for the writer: one being written and one ready is enough to overlap the two
        self.writes: queue.Queue[tuple[list[mqtt.MQTTMessage], Prepared] | None] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.writer = threading.Thread(target=self._write, name=f"{name}-writer", daemon=True)
        ingest.before_lookup = self._drain
        client.on_message(self.inbox.put)

    def start(self) -> Consumer:
        if self.decoders is not None:
            try:
                self.ingest.decoder = self.decoders.start()
            except OSError as err:  # e.g. an embedding program whose sys.executable is no Python: decode here
                log.error("could not start ingest decoding processes (%s); decoding in this process", err)
                self.decoders.stop()
                self.decoders = None
        self.writer.start()
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                first = self.inbox.get()
                if first is None:
                    return
                msgs = [first]
                while len(msgs) < self.group:
                    try:
                        m = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if m is None:
                        self.inbox.put(None)
                        break
                    msgs.append(m)
                self.writes.put((msgs, self._prepare(msgs)))
        finally:
            self.writes.put(None)

    def _drain(self) -> None:
        """In this consumer's thread: wait until every group prepared before is committed (other threads read
        what is committed, as before)."""
        if threading.current_thread() is self.thread:
            self.writes.join()

    def _prepare(self, msgs: list[mqtt.MQTTMessage]) -> Prepared:
        delay = 0.1
        batch = [(m.topic, bytes(m.payload), bool(m.retain)) for m in msgs]
        while True:
            try:
                return self.ingest.prepare(batch)
            except StoreUnavailable as err:  # a verdict's lookup or a state write: nothing acknowledged yet
                delay = self.ingest.backoff(err, len(msgs), delay)

    def _write(self) -> None:
        while True:
            item = self.writes.get()
            try:
                if item is None:
                    return
                msgs, prepared = item
                self.ingest.write(prepared)
                self._committed(msgs, prepared)
            except Exception:  # the writer must outlive a bug: the group stays unacknowledged, the broker resends it
                log.exception("ingest writer failed on a group of %d messages", len(item[0]) if item else 0)
            finally:
                self.writes.task_done()

    def _committed(self, msgs: list[mqtt.MQTTMessage], prepared: Prepared) -> None:
        """The one point where a group's records are committed (and only then): the devices are told which of their
        records are stored (fleet.acks), then its messages are acknowledged to the broker, in the order they came."""
        self._acknowledge(prepared)
        for m in msgs:
            self.client.ack(m)
        for m in msgs:
            if m.retain and m.payload and self._record_topic(m.topic):
                # retained records are refused by ingest; cleared so no later subscriber (a restarted
                # fleet, another worker) is handed it again
                self.client.publish(m.topic, b"", retain=True, timeout=None)

    def _acknowledge(self, prepared: Prepared) -> None:
        """Tell each device which of its records are stored (or refused), so it may delete them from its outbox
        (fleet.acks). Queued in paho, not waited for; a lost ack only makes the device send those records again,
        which ingest ignores by id and acknowledges again."""
        try:
            for topic, payload in acks_of(prepared, self.ingest.topics):
                self.client.publish(topic, payload, timeout=None)
        except Exception:  # the broker's PUBACKs for the group must still go out
            log.exception("could not publish the acks of a group of %d messages", len(prepared.messages))

    def _record_topic(self, topic: str) -> bool:
        parsed = self.ingest.topics.parse(topic)
        return parsed is not None and parsed[1] not in Topics.RETAINED

    def stop(self, timeout: float = 30) -> None:
        """Finish (commit and acknowledge) what is queued, then end the threads. Stop the client first."""
        self.inbox.put(None)
        self.thread.join(timeout)
        self.writer.join(timeout)
        if self.decoders is not None:
            self.ingest.decoder = None
            self.decoders.stop()


class IngestWorker:
    """One `shadowline fleet ingest-worker` process: the store, the device registry and ingest, fed by its own
    MQTT 5 client on the shared record subscriptions. No HTTP, no rollout or monitoring loop."""

    def __init__(self, config: FleetConfig, worker_id: str) -> None:
        if config.broker_url is None:
            from runtime.errors import ConfigError

            raise ConfigError("an ingest worker needs broker_url (an MQTT 5 broker such as Mosquitto 2 or EMQX)")
        self.config, self.worker_id = config, worker_id
        self.group_name = config.ingest_share_group or DEFAULT_SHARE_GROUP
        self.client_id = f"{config.client_id}-ingest-{worker_id}"
        self.store = Store(config.store, create=False)
        self.topics = Topics(config.prefix)
        self.ingest = Ingest(self.store, Devices(self.store), self.topics, config.record_limits)
        self.mqtt: MqttClient | None = None
        self.consumer: Consumer | None = None

    def start(self, wait: float = 30) -> IngestWorker:
        self.mqtt = MqttClient(self.config.broker_url or "", self.client_id, username=self.config.mqtt_username,
                               password=self.config.password(), tls=self.config.tls, persistent=True,
                               manual_ack=True, mqtt5=True, session_expiry_s=self.config.session_expiry_s)
        for f in record_filters(self.topics, self.group_name):
            self.mqtt.subscribe(f, 1)
        self.consumer = Consumer(self.ingest, self.mqtt, self.config.ingest_group, name=f"ingest-{self.worker_id}",
                                 decode_processes=self.config.ingest_decode_processes)
        self.consumer.start()
        self.mqtt.start(wait=wait)
        log.info("ingest worker %s: %s, share group %s", self.worker_id, self.mqtt.url, self.group_name)
        return self

    def stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.consumer is not None:
            self.consumer.stop()
        self.store.close()
