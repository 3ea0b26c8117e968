"""Test-side devices: plain paho clients that publish fleet.protocol batches with QoS 1 (retrying until PUBACK),
and a light simulated fleet of devices that follows desired states and reports. The real device agent is
edge/agent; these stand-ins exercise the fleet service's side of the contract only."""

from __future__ import annotations

import json
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet.protocol import Batch, Desired, PredictionRecord, Reported, ReviewRecord, Topics, decode, encode
from runtime.mqtt import parse_url


def client(url: str, client_id: str, persistent: bool = False, *, on_connect: Callable | None = None,
           on_message: Callable | None = None, on_subscribe: Callable | None = None, **auth) -> mqtt.Client:
    """A paho client connecting in the background. Callbacks are set here, before it connects: set afterwards,
    on_connect is missed whenever the CONNACK comes first (a test thread descheduled for a moment on a loaded
    machine), and a subscription made there never happens."""
    host, port, _ = parse_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
    if auth:
        c.username_pw_set(auth["username"], auth["password"])
    if on_connect is not None:
        c.on_connect = on_connect
    if on_message is not None:
        c.on_message = on_message
    if on_subscribe is not None:
        c.on_subscribe = on_subscribe
    c.reconnect_delay_set(0.05, 0.5)
    c.connect_async(host, port, 30)
    c.loop_start()
    return c


def outbox_device(url: str, device: str, topics: Topics, db: Path, **kw: Any) -> tuple[mqtt.Client, Any]:
    """A device's real outbox (edge.outbox.Publisher, fleet acks on, its SQLite file at `db`) on a paho client with
    a persistent session, wired as the agent wires it: PUBACKs, its acks subscription and `reconnected()` on every
    connection, acks to `on_ack`. Returns (client, publisher), both started."""
    from edge import outbox

    with sqlite3.connect(db) as conn:
        outbox.ensure_schema(conn)
    host, port, _ = parse_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, clean_session=False)
    c.reconnect_delay_set(0.05, 0.5)
    pub = outbox.Publisher(db, c, topics, device, poll_s=0.05, **kw)
    c.on_publish = pub.on_publish

    def on_connect(cl: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if pub.subscriptions():  # none without fleet acks (paho refuses an empty list)
            cl.subscribe(pub.subscriptions())
        pub.reconnected()

    c.on_connect = on_connect
    c.on_message = lambda cl, u, msg: pub.on_ack(msg.topic, bytes(msg.payload))
    pub.start()
    c.connect_async(host, port, 30)
    c.loop_start()
    return c, pub


def outbox_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def publish_until_acked(c: mqtt.Client, topic: str, payload: bytes, timeout: float = 60.0) -> None:
    """Publish with QoS 1 and wait for the PUBACK; if the connection drops first, publish again (paho may also
    resend its own copy after reconnecting, so the fleet can see it twice: ingest must not duplicate it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not c.is_connected():
            time.sleep(0.02)
            continue
        info = c.publish(topic, payload, qos=1)
        while time.monotonic() < deadline:
            try:
                if info.is_published():
                    return
            except RuntimeError:  # published while the connection was going down: try again
                break
            if not c.is_connected():
                break
            time.sleep(0.002)
    raise TimeoutError(f"no PUBACK for {topic} within {timeout}s")


def predictions(device: str, n: int, release: str = "seal", revision: int = 1, latency: float = 10.0,
                error_rate: float = 0.0, role: str = "active", seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        err = rng.random() < error_rate
        out.append(PredictionRecord(device=device, source=f"folder:img{i}.jpg", release=release, revision=revision,
                                    mode="shadow", role=role, decision="error" if err else rng.choice(["pass", "flag"]),
                                    top_label="defect", top_score=rng.random(),
                                    latency_ms={"total": latency * (0.8 + 0.4 * rng.random())},
                                    error="boom" if err else None).model_dump(mode="json"))
    return out


def batch(device: str, kind: str, records: list[dict]) -> bytes:
    return encode(Batch(device=device, kind=kind, records=records))


class SimFleet:
    """N simulated devices behind one MQTT connection: each follows its retained desired state, reports
    `active` (or a failure, for releases using a bundle in `bad_bundles`) and streams predictions of the release
    it runs with a per-release latency."""

    def __init__(self, url: str, topics: Topics, devices: list[str], *, bad_bundles: set[str] = frozenset(),
                 latency: dict[str, float] | None = None, predictions_per_report: int = 30,
                 error_rate: dict[str, float] | None = None, auth: dict[str, str] | None = None) -> None:
        self.topics, self.devices = topics, devices
        self.streamed: dict[str, list[dict]] = {d: [] for d in devices}  # active predictions sent, for reviews
        self.bad_bundles, self.latency, self.error_rate = set(bad_bundles), latency or {}, error_rate or {}
        self.per_report = predictions_per_report
        self.active: dict[str, str | None] = {d: None for d in devices}
        self.candidate: dict[str, str | None] = {d: None for d in devices}
        self.desired_seen: dict[str, int] = {}
        self.commands: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        self.queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()
        # one connection for every device: on a broker with the fleet's ACL it needs a service (fleet) user
        subscribed = threading.Event()
        self.c = client(url, f"sim-{id(self)}", on_message=self._on_message,
                        on_connect=lambda c, u, f, rc, p: c.subscribe([(topics.all_devices("desired"), 1),
                                                                       (topics.all_devices("cmd"), 1)]),
                        on_subscribe=lambda *a: subscribed.set(), **(auth or {}))
        wait_for(subscribed.is_set, 10, "simulated devices to connect and subscribe")
        for d in devices:
            self.c.publish(topics.device(d, "status"), b"online", qos=1, retain=True).wait_for_publish(10)
            self.report(d)

    def _on_message(self, c, u, msg) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None or parsed[0] not in self.active:
            return
        # handled on a worker: publishing and waiting for PUBACKs inside paho's callback would block its loop
        self.queue.put((msg.topic, msg.payload))

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                self._handle(*item)
            except Exception as err:  # kept for the test to assert on; a silent dead worker would look like a hang
                self.errors.append(f"{item[0]}: {type(err).__name__}: {err}")

    def _handle(self, topic: str, payload: bytes) -> None:
        device, kind = self.topics.parse(topic)
        if kind == "cmd":
            self.commands.append((device, json.loads(payload)))
            return
        if not payload:
            self.active[device], self.candidate[device] = None, None
            self.report(device)
            return
        d = decode(topic, payload, Desired)
        assert isinstance(d, Desired)
        if d.revision <= self.desired_seen.get(device, 0):
            return
        self.desired_seen[device] = d.revision
        bundles = {s.bundle for s in d.release.stages} | {s.bundle for s in (d.candidate.stages if d.candidate else [])}
        if bundles & self.bad_bundles:
            self.report(device, state="failed", error=f"check failed for {sorted(bundles & self.bad_bundles)}")
            return
        self.active[device] = d.release.ref
        self.candidate[device] = d.candidate.ref if d.candidate else None
        self.report(device, state="committed")
        self.stream(device)

    def report(self, device: str, state: str = "idle", error: str | None = None) -> None:
        rep = Reported(device=device, active=self.active[device], candidate=self.candidate[device],
                       desired_revision=self.desired_seen.get(device), activation={"state": state},
                       last_error=error)
        self.c.publish(self.topics.device(device, "reported"), encode(rep), qos=1, retain=True).wait_for_publish(10)

    def stream(self, device: str) -> None:
        for ref, role in ((self.active[device], "active"), (self.candidate[device], "candidate")):
            if not ref or not self.per_report:
                continue
            name, _, rev = ref.partition("@")
            recs = predictions(device, self.per_report, name, int(rev), self.latency.get(ref, 10.0),
                               error_rate=self.error_rate.get(ref, 0.0), role=role,
                               seed=hash((device, ref)) & 0xFFFF)
            publish_until_acked(self.c, self.topics.device(device, "predictions"), batch(device, "predictions", recs))
            if role == "active":
                self.streamed[device].extend(recs)

    def review(self, device: str, n: int, override_rate: float) -> None:
        """Verdicts on the last `n` active predictions the device sent; the first `n * override_rate` disagree
        with the model (a false positive on a flag, a missed defect on anything else): the fleet computes which
        verdicts are overrides from the prediction, so the verdict itself must disagree."""
        name, _, rev = (self.active[device] or "x@0").partition("@")

        def of_release() -> list[dict]:
            return [p for p in self.streamed[device] if p["release"] == name and p["revision"] == int(rev)]

        wait_for(lambda: len(of_release()) >= n, 30, f"{n} predictions of {device} on {self.active[device]}")
        preds = of_release()[-n:]
        recs = []
        for i, p in enumerate(preds):
            disagree = i < n * override_rate
            verdict = ("false_positive" if p["decision"] == "flag" else "missed_defect") if disagree else "confirm"
            recs.append(ReviewRecord(prediction_id=p["id"], device=device, inspector="ann", verdict=verdict,
                                     defect_class="defect" if verdict == "missed_defect" else None,
                                     override=disagree, model_decision=p["decision"], release=p["release"],
                                     revision=p["revision"]).model_dump(mode="json"))
        publish_until_acked(self.c, self.topics.device(device, "reviews"), batch(device, "reviews", recs))

    def stop(self) -> None:
        self.queue.put(None)
        self.worker.join(10)
        self.c.disconnect()
        self.c.loop_stop()
