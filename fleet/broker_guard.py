"""The rules the embedded broker enforces, the same as the generated Mosquitto config: a password for every
client, the client id replaced by the user name (Mosquitto's `use_username_as_clientid`), the ACL of
fleet/acl.py on every publish, subscription, delivery and last will, no retained messages on record topics, and
bounded packets.

amqtt 0.12 looks up (and, with clean_session, deletes) the session of the client id a CONNECT names before it
authenticates, and it replays retained messages matching *any* client's subscription to a connecting client. A
failed login with the fleet's client id would end the fleet's session, and every device would read every other
device's retained state. `GuardedBroker` admits a client before any session is touched and replays only what the
client's own subscriptions and the ACL allow. The overridden methods follow amqtt 0.12's (pinned in
pyproject.toml), with those checks added."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from fleet.acl import Acl
from fleet.credentials import verify_mosquitto_hash
from fleet.protocol import Topics

log = logging.getLogger(__name__)

CONNECT_LIMIT = 64 << 10  # a CONNECT (ids, user, password, will) is small; bound it before anyone is known


@dataclass
class Rules:
    """Who may connect and what they may do; replaced as a whole when the credential files change."""

    hashes: dict[str, str]  # user -> Mosquitto hash (from the password file)
    service: dict[str, str]  # user -> plain password of the fleet service's own in-process user
    acl: Acl
    topics: Topics

    def password_ok(self, user: str | None, password: str | None) -> bool:
        if not user or password is None:
            return False
        if user in self.service:
            return password == self.service[user]
        hashed = self.hashes.get(user)
        return hashed is not None and verify_mosquitto_hash(password, hashed)

    def may_retain(self, topic: str) -> bool:
        """Retained messages only where the protocol keeps state: desired, reported, status and fleet topics.
        A retained prediction batch would be replayed to every new subscriber, the fleet included."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            return topic.startswith(f"{self.topics.prefix}/fleet/")
        return parsed[1] in Topics.RETAINED


class PacketTooLarge(Exception):
    """Not an MQTTError on purpose: amqtt's reader loop discards the packet on an MQTTError and goes on parsing
    the rest of the payload as packets; any other exception ends the connection."""


class _LimitedReader(StreamReaderAdapter):
    """Refuses to read a packet larger than `limit` bytes instead of buffering it (amqtt reads a whole packet
    into memory, up to the protocol's 256 MB)."""

    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        super().__init__(reader)
        self.limit = limit

    async def read(self, n: int = -1) -> bytes:
        if n > self.limit:
            raise PacketTooLarge(f"packet of {n} bytes is over the limit of {self.limit}")
        return await super().read(n)


class GuardedBroker(Broker):
    """An amqtt Broker that enforces `Rules` (see the module docstring)."""

    def __init__(self, config: dict[str, Any], rules: Callable[[], Rules], max_packet: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, loop=loop)
        self._rules = rules
        self.max_packet = max_packet
        self.refusals: dict[str, int] = {}

    def _refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        await self._client_connected(listener_name, _LimitedReader(reader, CONNECT_LIMIT),
                                     StreamWriterAdapter(writer))

    def _admit(self, session: Session) -> tuple[int, str] | None:
        """None to admit the CONNECT, else (CONNACK code, reason)."""
        rules = self._rules()
        if not rules.password_ok(session.username, session.password):
            return BAD_USERNAME_PASSWORD, "bad user name or password"
        user = session.username
        assert user is not None
        if session.will_flag and session.will_topic is not None:
            if not rules.acl.allows(user, user, session.will_topic, "write"):
                return NOT_AUTHORIZED, f"last will on {session.will_topic} is outside {user}'s topics"
            if session.will_retain and not rules.may_retain(session.will_topic):
                return NOT_AUTHORIZED, f"retained last will on record topic {session.will_topic}"
        return None

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, client_session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except PacketTooLarge as err:
            self._refused("oversized packet")
            await writer.close()
            raise MQTTError(str(err)) from err
        refusal = self._admit(client_session)
        if refusal is not None:
            code, reason = refusal
            self._refused(reason.split(" on ")[0].split(" of ")[0])
            log.warning("embedded broker refused %s (user %r, client id %r) from %s: %s",
                        "connection", client_session.username, client_session.client_id, remote_address, reason)
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise MQTTError(f"refused: {reason}")
        # Mosquitto's use_username_as_clientid: a client is its user, whatever id it asked for, so it can only
        # ever take over (or clean) its own session
        client_session.client_id = client_session.username
        if isinstance(reader, _LimitedReader):
            reader.limit = self.max_packet

        # from here on, amqtt 0.12's own session handling
        if client_session.clean_session:
            await self._delete_session(client_session.client_id)
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.will_retain = client_session.will_retain
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(delay, int):
            client_session.keep_alive += delay
        return handler, client_session

    async def _authenticate(self, session: Session, _: Any) -> bool:
        return True  # admitted in _initialize_client_session, before any session was looked up

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        rules = self._rules()
        user = session.username
        if action == Action.SUBSCRIBE:
            ok = rules.acl.allows_subscribe(user, user or "", topic)
        elif action == Action.PUBLISH:
            ok = rules.acl.allows(user, user or "", topic, "write")
        else:
            ok = rules.acl.allows(user, user or "", topic, "read")
        if not ok:
            self._refused(f"{action.value} denied")
        return ok

    async def retain_message(self, source_session: Session | None, topic_name: str | None,
                             data: bytes | bytearray | None, qos: int | None = None) -> None:
        if source_session is not None and topic_name is not None and not self._rules().may_retain(topic_name):
            self._refused("retain on record topic")
            log.warning("embedded broker: %s may not retain a message on %s; delivered, not retained",
                        source_session.username, topic_name)
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, qos = subscription
        mine = any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, []))
        if not mine:
            return  # amqtt would replay retained messages of every other client's subscriptions
        handler = self._get_handler(session)
        if handler is None:
            return
        rules = self._rules()
        tasks = [asyncio.ensure_future(handler.mqtt_publish(r.topic, r.data, min(qos, r.qos or qos), retain=True))
                 for topic, r in list(self._retained_messages.items())
                 if self._matches(topic, topic_filter) and rules.acl.allows(session.username, session.username or "",
                                                                            topic, "read")]
        if tasks:
            await asyncio.wait(tasks)

    async def drop_unauthorised(self) -> int:
        """After the credentials changed: disconnect every client whose password no longer verifies (revoked or
        rotated), as Mosquitto does on SIGHUP. Returns how many were disconnected."""
        rules = self._rules()
        dropped = 0
        for _cid, (session, handler) in list(self._sessions.items()):
            if session.transitions.is_connected() and not rules.password_ok(session.username, session.password):
                log.warning("embedded broker: %s's credentials were revoked or rotated; disconnecting it",
                            session.username)
                await handler.handle_connection_closed()
                await handler.stop()
                dropped += 1
        return dropped
