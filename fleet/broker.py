"""MQTT connectivity: an embedded amqtt broker for a laptop or the demo, and paho-mqtt 2.x clients with persistent
sessions, QoS 1 and TLS for the fleet service (and for tests and benchmarks that publish like a device)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from fleet.acl import Acl, acl_text
from fleet.credentials import FLEET_USER, read_password_file
from fleet.protocol import Topics
from runtime.errors import ConfigError
from runtime.mqtt import MqttSettings, TLSSettings, make_client

if TYPE_CHECKING:  # amqtt is imported only where an embedded broker runs
    from fleet.broker_guard import GuardedBroker, Rules

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class EmbeddedBroker:
    """An amqtt broker in a background thread with its own event loop, with the rules of the generated Mosquitto
    config (fleet/broker_guard.py): per-user passwords from `credentials_dir/passwd`, the ACL in
    `credentials_dir/acl` (generated for `topics` when absent), client ids bound to user names. Both files are
    reread when they change, and clients whose credentials went are disconnected. Loopback by default; another
    address only with a password file. MQTT 3.1.1, retained messages, QoS 1: enough for a laptop or the demo
    (FIELD-NOTES: ~2k msgs/s), not for production."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, topics: Topics | None = None,
                 credentials_dir: Path | None = None, service_users: dict[str, str] | None = None,
                 max_packet: int = (16 << 20) + (64 << 10)) -> None:
        self.host, self.port = host, port
        self.topics = topics or Topics()
        self.credentials_dir = Path(credentials_dir) if credentials_dir is not None else None
        self.service_users = dict(service_users or {})
        self.max_packet = max_packet
        if not is_loopback(host) and (self.credentials_dir is None or not (self.credentials_dir / "passwd").is_file()):
            raise ConfigError(f"embedded broker: refusing to listen on {host}, beyond this machine, without a "
                              "password file (set broker_credentials_dir to the directory `shadowline fleet "
                              "credentials add` writes)")
        self._rules = self._load_rules()
        self._stamp = self._file_stamp()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: GuardedBroker | None = None
        self._watcher: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def refusals(self) -> dict[str, int]:
        """What the broker refused since it started, by reason (bad password, denied publish, ...)."""
        return dict(self._broker.refusals) if self._broker is not None else {}

    def _files(self) -> tuple[Path | None, Path | None]:
        if self.credentials_dir is None:
            return None, None
        return self.credentials_dir / "passwd", self.credentials_dir / "acl"

    def _file_stamp(self) -> tuple:
        stamp = []
        for f in self._files():
            try:
                st = f.stat() if f is not None else None
                stamp.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _load_rules(self) -> Rules:
        from fleet.broker_guard import Rules

        passwd, acl_file = self._files()
        hashes = read_password_file(passwd) if passwd is not None and passwd.exists() else {}
        if acl_file is not None and acl_file.exists():
            acl = Acl.load(acl_file)
            for user in self.service_users:  # the in-process service user is a fleet user whatever the file says
                acl.by_user.setdefault(user, Acl.parse(acl_text(self.topics, user)).by_user[user])
        else:
            acl = Acl.parse(acl_text(self.topics, sorted(self.service_users) or [FLEET_USER]))
        return Rules(hashes=hashes, service=self.service_users, acl=acl, topics=self.topics)

    async def _watch(self) -> None:
        """Reread the credential files when they change (what SIGHUP does for Mosquitto)."""
        while True:
            await asyncio.sleep(0.5)
            stamp = self._file_stamp()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self._rules = self._load_rules()
            except ConfigError as err:  # a half-edited file by hand: keep the last good rules, say why
                log.error("embedded broker: keeping the previous credentials: %s", err)
                continue
            if self._broker is not None:
                n = await self._broker.drop_unauthorised()
                log.info("embedded broker: credentials reloaded (%d users); %d clients disconnected",
                         len(self._rules.hashes), n)

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"embedded broker did not start on {self.host}:{self.port} within {timeout}s")
        if self._error is not None:
            raise ConfigError(f"embedded broker could not start on {self.host}:{self.port}: {self._error}") \
                from self._error
        return self

    def _run(self) -> None:
        from fleet.broker_guard import GuardedBroker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        # no amqtt plugins: admission and topic checks are GuardedBroker's, from the same files as Mosquitto
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}, "plugins": {}}

        async def boot() -> None:
            self._broker = GuardedBroker(config, lambda: self._rules, self.max_packet, loop=loop)
            await self._broker.start()
            self._watcher = loop.create_task(self._watch())

        try:
            loop.run_until_complete(boot())
        except BaseException as err:  # reported to start() and re-raised there as a ConfigError
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        # connections still being served when the broker shut down: end them here, not at interpreter exit
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        if self._watcher is not None:
            self._loop.call_soon_threadsafe(self._watcher.cancel)
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(10)
        except Exception as err:  # a broker that fails to shut down cleanly is still stopped below
            log.warning("embedded broker shutdown: %s", err)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None


MessageHandler = Callable[[mqtt.MQTTMessage], None]


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    """PUBACK received. A message published while disconnected is queued by paho (rc NO_CONN) and sent after
    reconnecting; is_published() raises for it, so read the flag it sets on the PUBACK."""
    try:
        return info.is_published()
    except RuntimeError:
        return bool(getattr(info, "_published", False))


class MqttClient:
    """A paho-mqtt 2.x client that (re)subscribes on every connect, with a persistent session (clean_session
    False) so QoS 1 messages published while it was away are delivered when it comes back."""

    def __init__(self, url: str, client_id: str, *, username: str | None = None, password: str | None = None,
                 tls: TLSSettings | None = None, persistent: bool = True, keepalive: int = 30,
                 will: tuple[str, bytes] | None = None, manual_ack: bool = False, mqtt5: bool = False,
                 session_expiry_s: int = 7 * 24 * 3600) -> None:
        """`mqtt5`: speak MQTT 5 (needed for shared subscriptions, `$share/<group>/...`); a persistent session
        then lasts `session_expiry_s` after a disconnect (MQTT 3.1.1 sessions last until the broker drops them)."""
        try:
            self.settings = MqttSettings(url=url, client_id=client_id, username=username, password=password,
                                         tls=tls, protocol="5" if mqtt5 else "3.1.1", keepalive_s=keepalive,
                                         persistent=persistent, session_expiry_s=session_expiry_s,
                                         reconnect_min_s=0.2, reconnect_max_s=5, max_inflight=100, max_queued=0)
        except ValidationError as err:
            raise ConfigError(f"MQTT client {client_id}: {err.errors()[0]['msg']}") from err
        self.url = url
        self._subs: dict[str, int] = {}
        self._handler: MessageHandler | None = None
        self._connected_callbacks: list[Callable[[], None]] = []
        self._connected = threading.Event()
        # set once the broker acknowledged every subscription of the current connection: a message published
        # after start() returns is then delivered (before the SUBACK the broker may not route it here yet)
        self._subscribed = threading.Event()
        self._pending: set[int] = set()
        self._sub_lock = threading.Lock()
        self.keepalive = keepalive
        self.last_rc: object = None
        self.persistent, self.mqtt5, self.session_expiry_s = persistent, mqtt5, session_expiry_s
        self._built = make_client(self.settings, manual_ack=manual_ack)
        self.client = self._built.client
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def on_message(self, handler: MessageHandler) -> None:
        self._handler = handler

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on paho's thread: it must not block) after every successful (re)connection."""
        self._connected_callbacks.append(callback)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._subs[topic_filter] = qos
        if self._connected.is_set():
            self._send_subscribe(self.client, topic_filter, qos)

    def _send_subscribe(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        with self._sub_lock:
            _, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                self._pending.add(mid)
                self._subscribed.clear()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._sub_lock:
            self._pending.discard(mid)
            if not self._pending:
                self._subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.last_rc = reason_code
        if reason_code.is_failure:
            log.warning("MQTT %s refused the connection: %s", self.url, reason_code)
            return
        with self._sub_lock:
            self._pending.clear()
            self._subscribed.set()
        for topic_filter, qos in self._subs.items():
            self._send_subscribe(client, topic_filter, qos)
        self._connected.set()
        for callback in self._connected_callbacks:
            callback()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code != 0:
            log.info("MQTT %s disconnected (%s); reconnecting", self.url, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if self._handler is not None:
            self._handler(msg)

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        """With manual_ack: acknowledge a QoS 1 message (after its records were committed)."""
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def start(self, wait: float | None = 10.0) -> MqttClient:
        """Connect in the background (paho's network thread retries forever); wait for the first CONNACK and the
        SUBACKs of the subscriptions made before."""
        self._built.connect_async()
        self.client.loop_start()
        deadline = time.monotonic() + (wait or 0)
        if wait and not self._connected.wait(wait):
            self.stop()
            raise ConfigError(f"cannot connect to MQTT broker {self.url} within {wait}s (last result: {self.last_rc})")
        if wait and not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
            self.stop()
            raise ConfigError(f"MQTT broker {self.url} did not acknowledge the subscriptions within {wait}s")
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1,
                timeout: float | None = 10.0) -> None:
        """Publish and, with a timeout, wait until the broker acknowledged it (PUBACK for QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while not _acked(info):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no PUBACK for {topic} within {timeout}s")
                time.sleep(0.002)

    def publish_many(self, messages: list[tuple[str, bytes, bool]], *, qos: int = 1,
                     timeout: float = 10.0) -> None:
        """Publish every message, then wait until the broker acknowledged all of them."""
        infos = [self.client.publish(t, p, qos=qos, retain=r) for t, p, r in messages]
        deadline = time.monotonic() + timeout
        for (topic, _, _), info in zip(messages, infos):
            while not _acked(info):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no PUBACK for {topic} within {timeout}s")
                time.sleep(0.001)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
