"""Production actions: a work-order MQTT message (paho, QoS 1) and/or an HTTP webhook per flagged frame.

A delivery row is written in the same transaction as the flagged prediction, so a crash never loses an action;
the dispatcher retries with exponential backoff and records every attempt. Delivery is at-least-once: the
work order carries the prediction id so the receiver can drop a repeat after a crash mid-delivery.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from edge import outbox
from edge.config import ActionsConfig
from edge.store import Store
from fleet.protocol import EventRecord, RecordKind
from runtime.mqtt import MqttSettings, make_client

log = logging.getLogger("shadowline.edge.actions")

WORK_ORDER_SCHEMA = "shadowline.work_order"


def work_order(record: dict[str, Any]) -> dict[str, Any]:
    return {"schema": WORK_ORDER_SCHEMA, "version": 1, "id": record["id"], "device": record["device"],
            "created_at": record["created_at"], "source": record["source"], "release": record["release"],
            "revision": record["revision"], "flagged": record["flagged"], "top_label": record.get("top_label"),
            "top_score": record.get("top_score"), "degraded": record.get("degraded")}


class MqttPublisher:
    """One persistent paho connection; `publish` waits for the broker's PUBACK."""

    def __init__(self, settings: MqttSettings) -> None:
        self.mqtt = make_client(settings)
        self.client = self.mqtt.client
        self.host, self.port = settings.host, settings.port
        self._started = False

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        if not self._started:
            self.mqtt.connect_async()
            self.client.loop_start()
            self._started = True
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise ConnectionError(f"not connected to {self.host}:{self.port}")
            time.sleep(0.05)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise TimeoutError(f"no PUBACK from {self.host}:{self.port} within {timeout}s")

    def close(self) -> None:
        if self._started:
            self.client.loop_stop()
            self.client.disconnect()


class ActionDispatcher:
    def __init__(self, cfg: ActionsConfig, store: Store, device_id: str, stop: threading.Event) -> None:
        self.cfg, self.store, self.device_id, self.stop = cfg, store, device_id, stop
        self.wake = threading.Event()
        self._mqtt: MqttPublisher | None = None
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.thread = threading.Thread(target=self._run, name="actions", daemon=True)

    def channels(self, release_actions: list[str]) -> list[str]:
        """Channels for a flag: the release's actions, or every configured channel if the release names none."""
        configured = [c for c, on in (("work_order_mqtt", self.cfg.mqtt), ("webhook", self.cfg.webhook)) if on]
        return [c for c in release_actions if c in configured] if release_actions else configured

    def start(self) -> ActionDispatcher:
        self.thread.start()
        return self

    def close(self) -> None:
        if self._mqtt is not None:
            self._mqtt.close()

    def _deliver(self, channel: str, payload: dict[str, Any]) -> str:
        body = json.dumps(payload).encode()
        if channel == "webhook":
            import httpx

            assert self.cfg.webhook is not None
            r = httpx.post(self.cfg.webhook.url, content=body, timeout=self.cfg.webhook.timeout_s,
                           headers={"Content-Type": "application/json", **self.cfg.webhook.headers})
            if r.status_code >= 300:
                raise ConnectionError(f"webhook answered HTTP {r.status_code}")
            return f"HTTP {r.status_code}"
        if channel == "work_order_mqtt":
            m = self.cfg.mqtt
            assert m is not None
            if self._mqtt is None:
                self._mqtt = MqttPublisher(m.settings(f"shadowline-{self.device_id}-actions"))
            self._mqtt.publish(m.topic, body, timeout=10.0)
            return "PUBACK"
        raise ValueError(f"unknown action channel {channel!r}")

    def run_due(self) -> int:
        """Attempt every due pending delivery once; returns how many were attempted."""
        rows = self.store.query("SELECT id, prediction_id, channel, payload, attempts FROM deliveries "
                                "WHERE state = 'pending' AND next_at <= ? ORDER BY id LIMIT 100", (time.time(),))
        for r in rows:
            if self.stop.is_set():
                break
            ok, detail = True, ""
            try:
                detail = self._deliver(r["channel"], json.loads(r["payload"]))
            except Exception as err:  # any failure is retried; the reason is recorded
                ok, detail = False, f"{type(err).__name__}: {err}"
            self.attempts += 1
            attempts = r["attempts"] + 1
            retry = self.cfg.retry
            final = "action_delivered" if ok else ("action_failed" if attempts >= retry.max_attempts else None)
            with self.store.tx() as c:
                if final is not None:  # the fleet sees each work order's outcome, not every retry
                    outbox.enqueue(c, RecordKind.EVENTS, EventRecord(device=self.device_id, kind=final, detail={
                        "prediction_id": r["prediction_id"], "channel": r["channel"], "attempts": attempts,
                        "detail": detail}).model_dump(mode="json"))
                c.execute("INSERT INTO delivery_attempts (delivery_id, at, ok, detail) VALUES (?,?,?,?)",
                          (r["id"], time.time(), int(ok), detail))
                if ok:
                    c.execute("UPDATE deliveries SET state='delivered', attempts=?, delivered_at=?, last_error=NULL "
                              "WHERE id=?", (attempts, time.time(), r["id"]))
                elif attempts >= retry.max_attempts:
                    c.execute("UPDATE deliveries SET state='failed', attempts=?, last_error=? WHERE id=?",
                              (attempts, detail, r["id"]))
                else:
                    wait = min(retry.backoff_s * 2 ** (attempts - 1), retry.max_backoff_s)
                    c.execute("UPDATE deliveries SET attempts=?, last_error=?, next_at=? WHERE id=?",
                              (attempts, detail, time.time() + wait, r["id"]))
            if ok:
                self.delivered += 1
            elif attempts >= retry.max_attempts:
                self.failed += 1
                log.error("action %s for delivery %s failed after %d attempts: %s", r["channel"], r["id"],
                          attempts, detail)
        return len(rows)

    def pending(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM deliveries WHERE state='pending'")[0][0])

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                n = self.run_due()
            except Exception:
                log.exception("action dispatcher pass failed")
                n = 0
            if n == 0:
                self.wake.wait(0.5)
                self.wake.clear()
