"""Ingest of everything devices send: record batches (predictions, reviews, metrics, alerts, events), reported
state and connection status. Idempotent by record id. A malformed message is counted and logged with its topic and
never raises: the MQTT thread must keep going, and the message is acknowledged so it is not redelivered forever."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pydantic import ValidationError

from fleet.devices import Devices
from fleet.protocol import (PROTOCOL_VERSION, RECORD_TYPES, STATUS_OFFLINE, STATUS_ONLINE, Batch, ProtocolError, Reported, Topics,
                            decode)
from fleet.store import Store

log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 << 20  # a batch of 5000 predictions is a few MB; anything far past that is not ours


@dataclass
class IngestStats:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    malformed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "records": self.records, "duplicates": self.duplicates,
                "malformed": self.malformed}


class Ingest:
    def __init__(self, store: Store, devices: Devices, topics: Topics) -> None:
        self.store, self.devices, self.topics = store, devices, topics
        self.stats = IngestStats()

    def subscriptions(self) -> list[str]:
        return [self.topics.all_devices(kind) for kind in Topics.FROM_DEVICE]

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """Process one message; True if it was well formed (even if every record was a duplicate)."""
        with self.stats.lock:
            self.stats.messages += 1
        try:
            self._handle(topic, payload)
            return True
        except (ProtocolError, ValidationError, ValueError, TypeError, KeyError) as err:
            self._malformed(topic, str(err))
            return False
        except Exception as err:  # a bug or a full disk must not kill the MQTT thread; count it and carry on
            log.exception("ingest failed on %s", topic)
            self._malformed(topic, f"{type(err).__name__}: {err}")
            return False

    def _malformed(self, topic: str, error: str) -> None:
        with self.stats.lock:
            self.stats.malformed += 1
        log.warning("malformed message on %s: %s", topic, error)
        try:
            self.store.count_malformed(topic[:256], error)
        except Exception:  # counting must not fail the handler either
            log.exception("could not count a malformed message on %s", topic)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None:
            raise ProtocolError(f"{topic}: not a device topic under {self.topics.prefix}/dev/")
        device, kind = parsed
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"{topic}: payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        if kind == "status":
            if not payload:
                return  # a cleared retained status
            text = payload.decode("utf-8", errors="replace").strip()
            if text not in (STATUS_ONLINE, STATUS_OFFLINE):
                raise ProtocolError(f"{topic}: status must be {STATUS_ONLINE!r} or {STATUS_OFFLINE!r}")
            self.devices.seen(device, text)
        elif kind == "reported":
            if not payload:
                return
            rep = decode(topic, payload, Reported)
            assert isinstance(rep, Reported)
            if rep.device != device:
                raise ProtocolError(f"{topic}: reported state of {rep.device!r} on the topic of {device!r}")
            self.devices.report(rep)
        elif kind in RECORD_TYPES:
            batch = decode(topic, payload, Batch)
            assert isinstance(batch, Batch)
            if batch.version != PROTOCOL_VERSION:
                raise ProtocolError(f"{topic}: batch version {batch.version} is not {PROTOCOL_VERSION}")
            if batch.device != device or batch.kind != kind:
                raise ProtocolError(f"{topic}: batch of {batch.kind} from {batch.device!r} on this topic")
            model = RECORD_TYPES[kind]
            good, bad = [], []
            for i, raw in enumerate(batch.records):
                try:
                    rec = model.model_validate(raw)
                except ValidationError as err:
                    bad.append(f"records[{i}]: {err.errors()[0]['loc']} {err.errors()[0]['msg']}")
                    continue
                if rec.device != device:  # type: ignore[attr-defined]
                    bad.append(f"records[{i}]: device {rec.device!r} differs from the topic")  # type: ignore
                    continue
                good.append(rec.model_dump(mode="json"))
            new = self.store.insert_records(kind, good)
            with self.stats.lock:
                self.stats.records += new
                self.stats.duplicates += len(good) - new
            if self.store.get("devices", device) is None:
                self.devices.seen(device)
            for b in bad:
                self._malformed(topic, b)
        else:
            raise ProtocolError(f"{topic}: devices do not publish {kind!r}")
