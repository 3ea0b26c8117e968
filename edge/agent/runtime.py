"""The device agent: an MQTT client that follows this device's desired state through the activation state
machine, answers fleet commands, reports every step, and drains the outbox."""

from __future__ import annotations

import logging
import platform
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edge import outbox
from edge.agent.cache import release_key
from edge.agent.commands import run_command
from edge.agent.config import AgentConfig
from edge.agent.control import STALE, ControlGuard, Refused
from edge.agent.host import AgentHost
from edge.agent.hub import Hub, Timer
from edge.agent.statemachine import ActivationRecord, Machine, State
from fleet.protocol import (
    Activation,
    CommandMessage,
    Desired,
    EventRecord,
    ProtocolError,
    RecordKind,
    Reported,
    Topics,
    decode,
    encode,
)
from runtime.mqtt import make_client
from runtime.signing import TrustStore

log = logging.getLogger(__name__)
REPORT_MIN_S = 0.25


class Agent:
    """`start()` connects and returns at once; the agent reconnects with exponential backoff on its own.

    On a device the agent runs on threads of its own (paho's network thread, a worker, the outbox publisher).
    Given a `hub` (edge.agent.hub.Hub), it runs on the hub's shared threads instead: many agents per process, each
    still with its own MQTT connection, session, last will, state machine, cache and outbox."""

    def __init__(self, config: AgentConfig, host: AgentHost, trust: TrustStore | None = None,
                 hub: Hub | None = None) -> None:
        self.config, self.host, self.hub = config, host, hub
        self.device_id = host.device_id
        self.topics = Topics(config.prefix)
        # refuses to start without the fleet's control key unless allow_unsigned_control says otherwise
        self.control = ControlGuard(config, self.device_id)
        if trust is None and config.trust_store is not None:
            trust = TrustStore.load(config.trust_store)
        self.mqtt = make_client(config.mqtt(self.device_id))
        self.client = self.mqtt.client
        self.machine = Machine(config, host, trust=trust, report=self._on_step)
        self.publisher = outbox.Publisher(
            host.db_path, self.client, self.topics, self.device_id, batch_size=config.batch_size,
            budget_bytes=int(config.outbox_budget_mb * (1 << 20)), poll_s=config.publish_interval_s,
            on_overflow=self._on_overflow, fleet_acks=config.outbox_fleet_acks,
            ack_timeout_s=config.outbox_ack_timeout_s)
        self.bad_messages = 0
        self.refused_control: dict[str, int] = {}  # control messages refused, by reason
        self.connected = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._report_lock = threading.Lock()
        # held from taking the snapshot of the reported state until paho has queued it: reports come from several
        # threads (the state machine's, MQTT's, a trailing or periodic timer), and without it an older snapshot
        # could be queued after a newer one, leaving the fleet (and the retained message) on the older state
        self._publish_lock = threading.Lock()
        self._last_report = 0.0
        self._report_timer: threading.Timer | Timer | None = None
        self._refresh: Timer | None = None
        status = self.topics.device(self.device_id, "status")
        self.client.will_set(status, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self.publisher.on_publish

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> Agent:
        if self.hub is not None:
            hub = self.hub
            self.publisher.start(hub)
            self._post(("resume", None))
            self._refresh = hub.call_later(self.config.report_interval_s, self._periodic)
            hub.connect(self.client, self.mqtt.settings.host, self.mqtt.settings.port, self.mqtt.settings.keepalive_s,
                        self.mqtt.connect_kwargs,
                        self.config.reconnect_min_s, self.config.reconnect_max_s)
            return self
        self.publisher.start()
        self._worker = threading.Thread(target=self._work, name=f"agent-{self.device_id}", daemon=True)
        self._worker.start()
        self.mqtt.connect_async()
        self.client.loop_start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Say `offline` (a clean disconnect does not fire the last will) and stop every thread."""
        self._stop.set()
        with self._report_lock:
            if self._report_timer is not None:
                self._report_timer.cancel()
        if self.hub is not None:
            self._stop_on_hub(timeout)
            return
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        self.publisher.stop()
        if self.client.is_connected():
            try:
                self.client.publish(self.topics.device(self.device_id, "status"), "offline", qos=1,
                                    retain=True).wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile: the broker publishes our last will instead
        self.client.disconnect()
        self.client.loop_stop()
        self.machine.close()

    def _stop_on_hub(self, timeout: float) -> None:
        assert self.hub is not None
        if self._refresh is not None:
            self._refresh.cancel()
        done = threading.Event()
        self.hub.submit(self, done.set)  # after the work already queued for this agent
        done.wait(timeout)
        self.publisher.stop()
        if self.client.is_connected():
            # a clean disconnect does not fire the last will: say offline first (written before the DISCONNECT)
            self.client.publish(self.topics.device(self.device_id, "status"), "offline", qos=1, retain=True)
        self.hub.disconnect(self.client)
        self.machine.close()

    def _post(self, item: tuple[str, Any]) -> None:
        """Queue work for the agent: its own worker thread takes it, or the hub runs `_drain` for it."""
        self._queue.put(item)
        if self.hub is not None and not self._stop.is_set():
            self.hub.submit(self, self._drain)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None or self._stop.is_set():
                return
            if item[0] == "resume":
                self._resume()
            else:
                self._handle(item)

    def _periodic(self) -> None:
        if self._stop.is_set() or self.hub is None:
            return
        self._post(("report", None))
        self._refresh = self.hub.call_later(self.config.report_interval_s, self._periodic)

    # -- MQTT callbacks (paho's network thread: never block here) ------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, reason)
            return
        client.publish(self.topics.device(self.device_id, "status"), "online", qos=1, retain=True)
        client.subscribe([(self.topics.device(self.device_id, "desired"), 1),
                          (self.topics.device(self.device_id, "cmd"), 1), *self.publisher.subscriptions()])
        self.connected.set()
        self._post(("report", None))
        self.publisher.reconnected()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.info("%s: disconnected (%s); reconnecting with backoff", self.device_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse(msg.topic)
        payload = bytes(msg.payload)
        try:
            if parsed is None or parsed[0] != self.device_id:
                raise ProtocolError(f"{msg.topic}: not a topic of device {self.device_id}")
            if parsed[1] == "desired":
                if not payload:
                    return  # a cleared retained message
                desired = decode(msg.topic, payload, Desired)
                assert isinstance(desired, Desired)
                # checked here, before the worker coalesces queued states by revision: a forged state never
                # gets to hide a real one
                self.control.check_desired(msg.topic, payload, desired)
                self._post(("desired", desired))
            elif parsed[1] == "cmd":
                cmd = decode(msg.topic, payload, CommandMessage).root
                self.control.check_command(msg.topic, payload, cmd)
                self._post(("cmd", cmd))
            elif parsed[1] == "acks":
                self.publisher.on_ack(msg.topic, payload)  # the fleet committed these records: delete them
            else:
                raise ProtocolError(f"{msg.topic}: unexpected topic")
        except ProtocolError as err:
            # malformed input never stops the agent: counted, logged with its topic, reported
            self.bad_messages += 1
            log.warning("bad message on %s: %s", msg.topic, err)
            self._post(("bad", str(err)))
        except Refused as refusal:
            self._post(("refused", (parsed[1] if parsed else msg.topic, refusal)))

    # -- worker --------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        self._resume()
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=self.config.report_interval_s)
            except queue.Empty:
                self.report()
                continue
            if item is None:
                break
            self._handle(item)

    def _resume(self) -> None:
        try:
            self.machine.resume()
        except Exception as err:  # a broken cache must not keep the agent from following new desired states
            log.exception("%s: resuming the activation failed", self.device_id)
            self._event("agent_error", {"error": f"resume: {err}"})

    def _handle(self, item: tuple[str, Any]) -> None:
        kind, value = item
        try:
            if kind == "desired":
                self._follow(self._latest(value))
            elif kind == "cmd":
                try:
                    self.control.fresh_nonce(value)
                except Refused as refusal:
                    self._refuse("cmd", refusal, command=value.id)
                else:
                    run_command(self, value)
            elif kind == "refused":
                self._refuse(value[0], value[1])
            elif kind == "bad":
                self._event("bad_message", {"error": value, "count": self.bad_messages})
            else:
                self.report()
        except Exception as err:
            log.exception("%s: %s failed", self.device_id, kind)
            self._event("agent_error", {"error": f"{kind}: {err}"})
            self.report()

    def _latest(self, desired: Desired) -> Desired:
        """Coalesce desired states that queued up while busy: only the newest revision matters."""
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[0] == "desired":
                desired = max(desired, item[1], key=lambda d: d.revision)
            else:
                rest.append(item)
        for item in rest:
            self._queue.put(item)
        return desired

    def _follow(self, desired: Desired) -> None:
        handled = self.machine.record.handled_revision
        if desired.revision == handled:
            self.report()  # the retained desired state again (every reconnection): nothing to do
            return
        if desired.revision < handled:
            # signed, but older than what we handled: a replay of an old state (or a late duplicate)
            self._refuse("desired", Refused(STALE, f"revision {desired.revision} is older than the handled "
                                                   f"revision {handled}"), revision=desired.revision)
            return
        self.machine.apply(desired)

    def _refuse(self, kind: str, refusal: Refused, **detail: Any) -> None:
        """A control message not acted on: counted by reason, logged, reported as a control.refused event."""
        self.refused_control[refusal.reason] = self.refused_control.get(refusal.reason, 0) + 1
        log.warning("%s: refused %s message: %s", self.device_id, kind, refusal)
        self._event("control.refused", {"topic": kind, "reason": refusal.reason, "error": refusal.error[:500],
                                        "count": sum(self.refused_control.values()), **detail})
        self.report()

    # -- reporting -----------------------------------------------------------------------------------------------
    def reported(self) -> Reported:
        r: ActivationRecord = self.machine.record
        active, candidate = self.host.current()
        status = self.host.status()
        # between activations the fleet reads the outcome of the last one
        state = r.state if r.state != State.IDLE else \
            (State.IDLE if not r.chain else State.COMMITTED if r.error is None else State.FAILED)
        activation = Activation(state=state, source=r.source, chain=r.chain, steps=r.steps, times=r.times,
                                skipped=r.skipped, target=release_key(r.target) if r.target else None,
                                previous=release_key(r.previous) if r.previous else None,
                                committed=release_key(r.committed) if r.committed else None,
                                target_revision=r.target.revision if r.target else None)
        return Reported(device=self.device_id, active=active.ref if active else None,
                        candidate=candidate.ref if candidate else None, cached=self.machine.cache.keys(),
                        desired_revision=r.handled_revision if r.handled_revision >= 0 else None,
                        activation=activation, last_error=r.error, backends=list(status.get("backends", [])),
                        hardware={"machine": platform.machine(), "system": platform.system(),
                                  "python": platform.python_version()})

    def report(self) -> None:
        """Publish the reported state (QoS 1, retained). Reports are queued in the order their snapshots were taken
        (`_publish_lock`), so the last one the broker gets is the latest state."""
        with self._publish_lock:
            self.client.publish(self.topics.device(self.device_id, "reported"), encode(self.reported()), qos=1,
                                retain=True)

    def _on_step(self, record: ActivationRecord, event: str, detail: dict[str, Any]) -> None:
        target = release_key(record.target) if record.target else None
        self._event(f"activation.{event}", {**detail, "target": target, "source": record.source.value})
        if event in ("done", "unchanged"):
            self.report()
        elif event in ("step", "error", "resume"):
            self._report_soon()

    def _report_soon(self) -> None:
        """Reported state at most every REPORT_MIN_S while steps fly by (a cached activation runs all six in
        milliseconds, and a fleet of hundreds would flood ingest), with a trailing report so a long step (a
        TensorRT build) is never shown stale. Every step still travels as an event."""
        with self._report_lock:
            now = time.monotonic()
            if now - self._last_report >= REPORT_MIN_S:
                self._last_report = now
                publish = True
            else:
                publish = False
                if self._report_timer is None:
                    delay = REPORT_MIN_S - (now - self._last_report)
                    if self.hub is not None:
                        self._report_timer = self.hub.call_later(delay, self._trailing_on_hub)
                    else:
                        timer = threading.Timer(delay, self._trailing_report)
                        timer.daemon = True
                        timer.start()
                        self._report_timer = timer
        if publish:
            self.report()

    def _trailing_on_hub(self) -> None:
        if self.hub is not None and not self._stop.is_set():
            self.hub.submit(self, self._trailing_report)

    def _trailing_report(self) -> None:
        with self._report_lock:
            self._report_timer = None
            self._last_report = time.monotonic()
        if not self._stop.is_set():
            self.report()

    def _event(self, kind: str, detail: dict[str, Any]) -> None:
        record = EventRecord(device=self.device_id, kind=kind, detail=detail)
        try:
            self.publisher.enqueue(RecordKind.EVENTS, record.model_dump(mode="json"))
        except RuntimeError:
            log.info("%s: event %s before start/after stop: %s", self.device_id, kind, detail)

    def _on_overflow(self, dropped: dict[str, int]) -> None:
        # called from the publisher's loop, which holds its (re-entrant) database lock
        assert self.publisher._conn is not None
        totals = outbox.losses(self.publisher._conn)
        self._event("outbox_overflow", {"dropped": dropped, "total_dropped": totals,
                                        "budget_mb": self.config.outbox_budget_mb})
