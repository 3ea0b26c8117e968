"""The fleet service: the store and the domain objects (`Fleet`), wired to MQTT and a rollout loop
(`FleetService`), served over HTTP by `shadowline fleet serve`. Several instances may run on one store (API
replicas): each serves the API and reads devices' state; the rollout, monitoring and notification loops run only
in the one elected leader through the store (fleet.store.leader), and another takes over when it dies."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from fleet.alerting import AlertBook, JsonlActionLog, NotificationLog, Notifier
from fleet.broker import EmbeddedBroker, MqttClient
from fleet.config import FleetConfig
from fleet.control import ControlSigner
from fleet.desired import DesiredStates, Publish, PublishMany
from fleet.devices import Devices
from fleet.images import ImageStore
from fleet.ingest import Ingest
from fleet.ingest_worker import Consumer, record_filters, state_filters
from fleet.monitoring import Monitor
from fleet.protocol import Topics
from fleet.registry import Registry
from fleet.releases import Releases
from fleet.rollout import Rollouts
from fleet.security import Tokens
from fleet.store import Store
from fleet.store.leader import FileLeadership, Leadership, PostgresLeadership
from runtime.signing import TrustStore

log = logging.getLogger(__name__)


class Fleet:
    """Everything the fleet knows, without any network: usable from tests and the API alike. `publish` sends
    desired states; until MQTT is attached it refuses, so nothing pretends to have reached a device."""

    def __init__(self, config: FleetConfig, publish: Publish | None = None) -> None:
        self.config = config
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir = data / "artifacts"
        self.store = Store(config.store)
        self.topics = Topics(config.prefix)
        trust = TrustStore.load(config.trust_store) if config.trust_store else None
        self.tokens = Tokens.load(config.tokens_file)
        self.registry = Registry(self.store, self.artifacts_dir, trust)
        self.releases = Releases(self.store, self.registry)
        self.devices = Devices(self.store)
        img = config.images
        self.images = ImageStore(self.store, img.dir or data / "images", int(img.budget_mb * (1 << 20)),
                                 int(img.max_image_mb * (1 << 20)))
        self._publish = publish
        self._publish_many: PublishMany | None = None
        # set by FleetService once it has a broker connection; /metrics reports it
        self.broker_connected: Callable[[], bool] | None = None
        # the key that signs desired states and commands (made on first start in the data directory)
        self.control = ControlSigner.for_fleet(data, config.control_key, trust, config.command_ttl_s)
        self.desired = DesiredStates(self.store, self.registry, self.releases, self.topics, config.base_url,
                                     self.publish, self.publish_many, signer=self.control)
        self.rollouts = Rollouts(self.store, self.releases, self.devices, self.desired, config.adjudicators)
        self.ingest = Ingest(self.store, self.devices, self.topics, config.record_limits)
        self.monitor = Monitor(self.store, self.topics, config, self.publish)
        # acknowledge / silence / resolve, and the notifier that tells people (webhook, e-mail)
        self.alerts = AlertBook(self.store, JsonlActionLog(data / "alert-actions.jsonl"), config.alerting,
                                lock=self.monitor.lock, announce=self.monitor.announce)
        self.notifier = Notifier(config.alerting, self.alerts, NotificationLog(data / "alert-notifications.jsonl"),
                                 dashboard_url=config.base_url)
        self.monitor.observers.append(self.notifier.observe)

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self._publish is None:
            from runtime.errors import BackendUnavailable
            raise BackendUnavailable("the fleet service is not connected to a broker")
        self._publish(topic, payload, retain)

    def publish_many(self, messages: list[tuple[str, bytes, bool]]) -> None:
        if self._publish_many is not None:
            self._publish_many(messages)
        else:
            for m in messages:
                self.publish(*m)

    def attach(self, publish: Publish, publish_many: PublishMany | None = None) -> None:
        self._publish, self._publish_many = publish, publish_many

    def close(self) -> None:
        self.store.close()


class FleetService:
    """Fleet + broker connection + rollout loop. start() connects (starting the embedded broker when no broker
    URL is configured); stop() undoes it."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.fleet = Fleet(config)
        self.name = config.instance_name or config.client_id
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttClient | None = None
        self.consumer: Consumer | None = None
        self._stop = threading.Event()
        self._reconnected = threading.Event()
        self.leading = threading.Event()  # set while this instance is the elected leader
        self.leadership = leadership(self.fleet.store, self.name)
        self._threads: list[threading.Thread] = []
        self.loop_alive = threading.Event()

    @property
    def broker_url(self) -> str:
        host = self.config.embedded_broker_host
        return self.config.broker_url or f"mqtt://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:" \
                                         f"{self.config.embedded_broker_port}"

    def start(self) -> FleetService:
        username, password = self.config.mqtt_username, self.config.password()
        if self.config.broker_url is None:
            # the service's own user on its in-process broker: a password nobody else ever sees
            username, password = username or self.config.client_id, secrets.token_urlsafe(32)
            self.broker = EmbeddedBroker(self.config.embedded_broker_port, self.config.embedded_broker_host,
                                         topics=self.fleet.topics, credentials_dir=self.config.broker_credentials_dir,
                                         service_users={username: password}).start()
        # manual acknowledgement: a message is acknowledged only after the transaction holding its records
        # committed, so a kill at any point leaves it unacknowledged (redelivered, ignored by id if it was in)
        share = self.config.ingest_share_group
        self.mqtt = MqttClient(self.broker_url, self.config.client_id, username=username, password=password,
                               tls=self.config.tls, persistent=True, manual_ack=True, mqtt5=share is not None,
                               session_expiry_s=self.config.session_expiry_s)
        filters = state_filters(self.fleet.topics)
        if self.config.ingest_in_service:
            filters += record_filters(self.fleet.topics, share)
        for f in filters:
            self.mqtt.subscribe(f, 1)
        self.consumer = Consumer(self.fleet.ingest, self.mqtt, self.config.ingest_group,
                                 decode_processes=self.config.ingest_decode_processes
                                 if self.config.ingest_in_service else 0).start()
        self.mqtt.on_connected(self._reconnected.set)
        self.mqtt.start(wait=30)
        self.fleet.attach(self._publish, self._publish_many)
        self.fleet.broker_connected = lambda: self.mqtt is not None and self.mqtt.connected
        self._spawn(self._lead, "leader")
        self._spawn(self._run, "rollout-loop")
        if self.config.monitor_interval_s > 0:
            self._spawn(self._watch, "monitor-loop")
        if self.fleet.notifier.enabled:
            self._spawn(self._notifications, "notify-loop")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish and wait for the PUBACK. With the broker away the message stays queued in paho and the stored
        desired states are republished on reconnection, so an outage delays a rollout step, never fails it."""
        assert self.mqtt is not None
        try:
            self.mqtt.publish(topic, payload, retain=retain, timeout=self.config.publish_timeout_s)
        except TimeoutError:
            log.warning("broker unreachable: %s queued, will be delivered after reconnection", topic)

    def _publish_many(self, messages: list[tuple[str, bytes, bool]]) -> None:
        assert self.mqtt is not None
        try:
            self.mqtt.publish_many(messages, timeout=self.config.publish_timeout_s)
        except TimeoutError:
            log.warning("broker unreachable: %d messages queued, delivered after reconnection", len(messages))

    def _lead(self) -> None:
        """Leader election: a standby tries to take the lock every leader_check_s; the leader checks it still
        holds it and steps down at once if not. A new leader first republishes every stored desired state (the
        one before it may have died between storing one and publishing it; devices ignore revisions they have)."""
        while not self._stop.is_set():
            try:
                if self.leading.is_set():
                    if not self.leadership.held():
                        self.leading.clear()
                        log.error("%s lost the leadership; the rollout and monitoring loops stop here", self.name)
                elif self.leadership.try_acquire():
                    log.info("%s leads: the rollout and monitoring loops run here", self.name)
                    self._reconnected.set()
                    self.leading.set()
            except Exception:  # the store away: stay (or become) a standby and try again
                if self.leading.is_set():
                    self.leading.clear()
                log.exception("leader election")
            self._stop.wait(self.config.leader_check_s)
        self.leading.clear()
        self.leadership.release()

    def _run(self) -> None:
        self.loop_alive.set()
        while not self._stop.wait(self.config.rollout_tick_s):
            if not self.leading.is_set():
                continue
            try:
                if self._reconnected.is_set():
                    # here, not in paho's callback: publishing waits for PUBACKs that callback thread delivers
                    self._reconnected.clear()
                    n = self.fleet.desired.republish()
                    log.info("republished %d desired states", n)
                self.fleet.rollouts.tick()
            except Exception:  # a broker outage or a bug in one tick must not end the loop
                log.exception("rollout loop")
        self.loop_alive.clear()

    def _watch(self) -> None:
        """The monitoring loop: its own thread, so a long evaluation never delays a rollout step."""
        while not self._stop.wait(self.config.monitor_interval_s):
            if not self.leading.is_set():
                continue
            try:
                self.fleet.monitor.run_once()
            except Exception:  # one bad pass (a broken record, a full disk) must not end monitoring
                log.exception("monitor loop")

    def _notifications(self) -> None:
        """Send due alert notifications: its own thread, so a slow SMTP server never delays monitoring."""
        while not self._stop.wait(self.config.alerting.tick_s):
            if not self.leading.is_set():
                continue
            try:
                self.fleet.notifier.flush()
            except Exception:  # one failing pass must not end notifications
                log.exception("notify loop")

    @property
    def ready(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected and self.loop_alive.is_set()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.consumer is not None:
            self.consumer.stop()
        if self.broker is not None:
            self.broker.stop()
        self.fleet.close()


def leadership(store: Store, name: str) -> Leadership:
    """The leader election that fits the store: PostgreSQL advisory lock, or a lock file next to the SQLite file."""
    if store.dialect == "postgresql":
        return PostgresLeadership(store.engine, name)
    assert store.path is not None, "an in-memory SQLite store cannot elect a leader"
    return FileLeadership(store.path.with_name(store.path.name + ".leader"), name)
