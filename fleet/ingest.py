"""Ingest of everything devices send: record batches (predictions, reviews, metrics, alerts, events), reported
state and connection status. Idempotent by record id. A malformed message is counted and logged with its topic and
never raises: the MQTT thread must keep going, and the message is acknowledged so it is not redelivered forever."""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError, create_model

from fleet.devices import Devices, States
from fleet.protocol import (
    PROTOCOL_VERSION,
    RECORD_TYPES,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Batch,
    ProtocolError,
    RecordKind,
    Reported,
    Topics,
    decode,
)
from fleet.store import Store, StoreUnavailable, row_values
from fleet.validation import RecordLimits, RecordValidator, Refusal

if TYPE_CHECKING:
    from fleet.ingest_decode import DecoderPool

log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 << 20  # a batch of 5000 predictions is a few MB; anything far past that is not ours


# Young-generation threshold of the cyclic GC in an ingest process (Python's default is 700 allocations). A batch
# of 200 predictions makes a few thousand tracked objects (each record model, its dicts and lists), so the default
# collects several times per batch while the batch is still alive, traversing it each time: 9-30% of the CPU
# of handle_many measured (benchmarks/fleet_ingest.py, docs/scale-out.md).
INGEST_GC_GEN0 = 10_000


def tune_gc_for_ingest() -> None:
    """Called once at the start of a process whose work is ingest (`fleet serve`, `fleet ingest-worker`): the
    objects made so far (modules, schemas, config) are moved out of the collector's way (`gc.freeze`) and young
    collections run every INGEST_GC_GEN0 allocations instead of 700. Garbage is still collected, only less often;
    not for a process that holds other work (tests, an embedding application)."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, INGEST_GC_GEN0), gen1, gen2)


@dataclass
class IngestStats:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    malformed: int = 0
    refused: int = 0
    # (message index, topic, ids) of records refused by validation: acknowledged to the device as refused
    # (fleet.acks), so it stops sending them
    refused_ids: list[tuple[int, str, list[str]]] = field(default_factory=list)
    store_retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "records": self.records, "duplicates": self.duplicates,
                "malformed": self.malformed, "refused": self.refused, "store_retries": self.store_retries}


class BuiltRows(list):
    """Store rows of a batch's records (`row_values`), built by a decoding process (`fleet.ingest_decode`): inserted
    as they are. `ids` reads a record's id from its row."""

    def ids(self) -> list[str]:
        return [row[0] for row in self]


def record_ids(records: list) -> list[str]:
    """The ids of a pending batch's records: validated models, or rows already built."""
    return records.ids() if isinstance(records, BuiltRows) else [r.id for r in records]


@dataclass
class Prepared:
    """Messages of one group, decoded, validated and screened, not yet written: whether each was well formed,
    and the records to insert as (message index, topic, kind, records)."""

    messages: list
    ok: list[bool]
    pending: list[tuple[int, str, str, list]]
    # malformed messages and refused records found, added to the stats once the group is written: a reader
    # waiting for a count then also sees the group's good records
    malformed: int = 0
    refused: int = 0
    # (message index, topic, ids) of records refused by validation: acknowledged to the device as refused
    # (fleet.acks), so it stops sending them
    refused_ids: list[tuple[int, str, list[str]]] = field(default_factory=list)
    # connection status and reported state of the group, written together once it is decoded (Devices.write)
    states: States = field(default_factory=States)


class Ingest:
    def __init__(self, store: Store, devices: Devices, topics: Topics, limits: RecordLimits | None = None) -> None:
        self.store, self.devices, self.topics = store, devices, topics
        self.stats = IngestStats()
        self.validator = RecordValidator(limits or RecordLimits(), self._lookup)
        self._known: set[str] = set()  # devices already registered (saves a lookup per batch)
        self._local = threading.local()  # the group being prepared by this thread
        # called before a verdict's prediction is looked up in the store: a pipelined consumer (ingest_worker)
        # waits there until the groups it prepared earlier are committed
        self.before_lookup: Callable[[], None] = lambda: None
        # decoding processes for batches of predictions (ingest_decode_processes), set by the consumer that owns them
        self.decoder: DecoderPool | None = None

    def subscriptions(self) -> list[str]:
        return [self.topics.all_devices(kind) for kind in Topics.FROM_DEVICE]

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """Process one message; True if it was well formed (even if every record was a duplicate)."""
        return self.handle_many([(topic, payload, retained)])[0]

    def handle_many(self, messages: list[tuple[str, bytes]] | list[tuple[str, bytes, bool]]) -> list[bool]:
        """Process messages (topic, payload[, retained]) and commit all their records in one transaction (the
        caller acknowledges them to the broker only after this returns). Never raises: whatever is wrong is
        counted as malformed (by topic) or refused (by device and reason). A store that cannot be reached
        (connection lost, database locked) is not the message's fault: the group is retried until the store
        answers (everything in it is idempotent), so nothing is acknowledged, and nothing lost, while it is away."""
        delay = 0.1
        while True:
            try:
                prepared = self.prepare(messages)
                self._write_once(prepared)
            except StoreUnavailable as err:
                delay = self.backoff(err, len(messages), delay)
                continue
            self._done(prepared)
            return prepared.ok

    def prepare(self, messages: list[tuple[str, bytes]] | list[tuple[str, bytes, bool]]) -> Prepared:
        """The first half of `handle_many`: decode, validate and screen the messages' records (refusals and
        malformed messages counted, status and reported state applied), inserting nothing. Raises StoreUnavailable
        only (a verdict's prediction could not be looked up; state could not be written): retry it."""
        prepared = Prepared(messages, [True] * len(messages), [])
        decoded = self._decoded(messages) if self.decoder is not None else {}
        self._local.prepared = prepared
        try:
            self._process(messages, prepared.ok, prepared.pending, decoded)
            self._write_states(prepared)
        finally:
            self._local.prepared = None
        return prepared

    def _write_states(self, prepared: Prepared) -> None:
        """The group's status and reported state, the latest per device, in one transaction; a message whose state
        the store refused counts as malformed."""
        for i, err in self.devices.write(prepared.states).items():
            prepared.ok[i] = False
            self._malformed(prepared.messages[i][0], f"store: {type(err).__name__}: {err}")

    def write(self, prepared: Prepared) -> list[bool]:
        """The second half: commit the prepared records in one transaction, retried while the store is
        unavailable (the insert is idempotent by record id); then the messages may be acknowledged. Returns
        whether each message was well formed."""
        delay = 0.1
        while True:
            try:
                self._write_once(prepared)
            except StoreUnavailable as err:
                delay = self.backoff(err, len(prepared.messages), delay)
                continue
            self._done(prepared)
            return prepared.ok

    def backoff(self, err: StoreUnavailable, n: int, delay: float) -> float:
        """Count and log a store that is unavailable, sleep `delay`; the next delay (doubled, at most 5 s)."""
        with self.stats.lock:
            self.stats.store_retries += 1
        log.error("fleet store unavailable (%s); retrying %d messages in %.1fs", err, n, delay)
        time.sleep(delay)
        return min(delay * 2, 5.0)

    def _done(self, prepared: Prepared) -> None:
        with self.stats.lock:  # counted when done, so a reader seeing the count also sees the records
            self.stats.messages += len(prepared.messages)
            self.stats.malformed += prepared.malformed
            self.stats.refused += prepared.refused

    def _tally(self, malformed: int = 0, refused: int = 0) -> None:
        """Count malformed messages and refused records: with the group being prepared in this thread (added
        to the stats when it is written), else at once."""
        prepared: Prepared | None = getattr(self._local, "prepared", None)
        if prepared is not None:
            prepared.malformed += malformed
            prepared.refused += refused
            return
        with self.stats.lock:
            self.stats.malformed += malformed
            self.stats.refused += refused

    def _lookup(self, device: str, ids: list[str]) -> dict:
        """Stored predictions for verdicts: first every prepared group still being written (`before_lookup`), so a
        verdict never misses a prediction that came in an earlier message."""
        self.before_lookup()
        return self.store.predictions_by_id(device, ids)

    def _decoded(self, messages: list) -> dict[int, BuiltRows]:
        """Rows of the group's batches of predictions that the decoding processes (`decoder`) found good whole, by
        message index. Only batches after the group's last batch of verdicts: a verdict may name a prediction of an
        earlier message of its group, which must then be at hand as a record (decoded here, as without them)."""
        assert self.decoder is not None
        after = 0
        for i, (topic, *_) in enumerate(messages):
            parsed = self.topics.parse(topic)
            if parsed is not None and parsed[1] == RecordKind.REVIEWS:
                after = i + 1
        at, batches = [], []
        for i in range(after, len(messages)):
            topic, payload, *flags = messages[i]
            parsed = self.topics.parse(topic)
            if (parsed is not None and parsed[1] == RecordKind.PREDICTIONS and payload
                    and len(payload) <= MAX_PAYLOAD and not (flags and flags[0])):
                at.append(i)
                batches.append((parsed[0], bytes(payload)))
        try:
            got = self.decoder.rows(batches)
        except Exception:  # a bug there must not stop ingest: everything is decoded here instead
            log.exception("decoding processes failed on a group of %d messages; decoding it here", len(messages))
            return {}
        return {i: BuiltRows(rows) for i, rows in zip(at, got, strict=True) if rows is not None}

    def _process(self, messages: list, ok: list[bool], pending: list, decoded: dict[int, BuiltRows]) -> None:
        predictions: dict = {}  # accepted predictions of this group by id: a verdict may come in the same group
        for i, (topic, payload, *flags) in enumerate(messages):
            if i in decoded:
                pending.append((i, topic, RecordKind.PREDICTIONS, decoded[i]))
                continue
            try:
                got = self._handle(topic, payload, bool(flags and flags[0]), at=i)
                if got is not None:
                    kind, recs = got
                    device = topic.split("/")[-2]
                    screened, refusals = self.validator.screen(kind, device, recs, predictions)
                    self.refuse(device, refusals)
                    if refusals:
                        self._note_refused(i, topic, recs, screened)
                    recs = screened
                    if recs:
                        pending.append((i, topic, kind, recs))
            except (ProtocolError, ValidationError, ValueError, TypeError, KeyError) as err:
                ok[i] = False
                self._malformed(topic, str(err))
            except StoreUnavailable:
                raise
            except Exception as err:  # a bug must not kill the MQTT thread; count it and carry on
                log.exception("ingest failed on %s", topic)
                ok[i] = False
                self._malformed(topic, f"{type(err).__name__}: {err}")

    def _note_refused(self, i: int, topic: str, records: list, kept: list) -> None:
        """Remember the ids of the records of message `i` that validation refused (in the group being prepared)."""
        prepared: Prepared | None = getattr(self._local, "prepared", None)
        if prepared is None:
            return
        keep = {getattr(r, "id", None) for r in kept}
        ids = [r.id for r in records if isinstance(getattr(r, "id", None), str) and r.id not in keep]
        if ids:
            prepared.refused_ids.append((i, topic, ids))

    def _write_once(self, prepared: Prepared) -> None:
        pending, ok = prepared.pending, prepared.ok
        if not pending:
            return
        try:
            groups: dict[str, list[tuple]] = {}
            for _, _, kind, recs in pending:
                groups.setdefault(kind, []).extend(_rows(kind, recs))
            new = self.store.insert_rows(groups)
            self._count(sum(len(r) for *_, r in pending), new)
        except StoreUnavailable:
            raise
        except Exception:  # e.g. one poisoned row, a full disk: retry message by message and count what fails
            log.exception("group insert of %d messages failed; retrying one by one", len(pending))
            for i, topic, kind, recs in pending:
                try:
                    self._count(len(recs), self.store.insert_rows({kind: _rows(kind, recs)}))
                except StoreUnavailable:
                    raise
                except Exception as err:
                    ok[i] = False
                    self._malformed(topic, f"store: {type(err).__name__}: {err}")
        for _, topic, *_ in pending:
            device = topic.split("/")[-2]
            if device not in self._known:
                if self.store.get("devices", device) is None:
                    self.devices.seen(device)
                self._known.add(device)

    def refuse(self, device: str, refusals: list[Refusal]) -> None:
        """Count refused records per reason (one store write per reason), log the first of each."""
        if not refusals:
            return
        self._tally(refused=len(refusals))
        by_reason: dict[str, list[Refusal]] = {}
        for r in refusals:
            by_reason.setdefault(r.reason, []).append(r)
        for reason, rs in by_reason.items():
            log.warning("refused %d record(s) from %s (%s): %s", len(rs), device, reason, rs[-1].detail)
            try:
                self.store.count_refused(device, reason, rs[-1].detail, len(rs))
            except Exception:  # counting must not fail the handler
                log.exception("could not count refused records of %s", device)

    def _count(self, total: int, new: int) -> None:
        with self.stats.lock:
            self.stats.records += new
            self.stats.duplicates += total - new

    def _malformed(self, topic: str, error: str) -> None:
        self._tally(malformed=1)
        log.warning("malformed message on %s: %s", topic, error)
        try:
            self.store.count_malformed(topic[:256], error)
        except Exception:  # counting must not fail the handler either
            log.exception("could not count a malformed message on %s", topic)

    def _handle(self, topic: str, payload: bytes, retained: bool = False,
                at: int = 0) -> tuple[RecordKind, list] | None:
        """Gather status and reported state (message `at` of the group) to be written once the group is decoded;
        return (kind, validated records) of a batch to insert."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            raise ProtocolError(f"{topic}: not a device topic under {self.topics.prefix}/dev/")
        device, kind = parsed
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"{topic}: payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
        if kind in RECORD_TYPES and not payload:
            return None  # a retained message being cleared (the fleet clears replays, below)
        if retained and kind in RECORD_TYPES:
            # a retained batch is replayed to every new subscription (another ingest worker, a restarted fleet):
            # records arrive once, live; a replay is refused, whoever retained it
            self.refuse(device, [Refusal("retained", f"retained message on {topic} not replayed into the store")])
            return None
        if kind == "status":
            if not payload:
                return None  # a cleared retained status
            text = payload.decode("utf-8", errors="replace").strip()
            if text not in (STATUS_ONLINE, STATUS_OFFLINE):
                raise ProtocolError(f"{topic}: status must be {STATUS_ONLINE!r} or {STATUS_OFFLINE!r}")
            self._states(topic).seen(device, text, at)
            return None
        elif kind == "reported":
            if not payload:
                return None
            rep = decode(topic, payload, Reported)
            assert isinstance(rep, Reported)
            if rep.device != device:
                raise ProtocolError(f"{topic}: reported state of {rep.device!r} on the topic of {device!r}")
            self._states(topic).report(rep, at)
            return None
        elif kind in RECORD_TYPES:
            kind = RecordKind(kind)
            records = typed_records(kind, device, payload)
            if records is not None:
                return kind, records
            batch = decode(topic, payload, Batch)
            assert isinstance(batch, Batch)
            if batch.version != PROTOCOL_VERSION:
                raise ProtocolError(f"{topic}: batch version {batch.version} is not {PROTOCOL_VERSION}")
            if batch.device != device or batch.kind != kind:
                raise ProtocolError(f"{topic}: batch of {batch.kind} from {batch.device!r} on this topic")
            good, bad = self._records(kind, device, batch.records)
            for b in bad:
                self._malformed(topic, b)
            self.refuse(device, [Refusal("schema", b) for b in bad])
            return kind, good
        else:
            raise ProtocolError(f"{topic}: devices do not publish {kind!r}")

    def _states(self, topic: str) -> States:
        """Where status and reported state go: the group being prepared in this thread (always, through prepare)."""
        prepared: Prepared | None = getattr(self._local, "prepared", None)
        assert prepared is not None, f"{topic}: state applied outside Ingest.prepare"
        return prepared.states

    def _records(self, kind: RecordKind, device: str, raws: list[dict]) -> tuple[list, list[str]]:
        """Validated records of a batch and the errors of the bad ones. The whole list is validated in one call
        (the common case: all good); only a batch with a bad record is gone through one by one."""
        model = RECORD_TYPES[kind]
        try:
            recs = _list_adapter(model).validate_python(raws)
        except ValidationError:
            recs = None
        good, bad = [], []
        for i, raw in enumerate(raws):
            if recs is not None:
                rec = recs[i]
            else:
                try:
                    rec = model.model_validate(raw)
                except ValidationError as err:
                    bad.append(f"records[{i}]: {err.errors()[0]['loc']} {err.errors()[0]['msg']}")
                    continue
            good.append(rec)  # a record of another device than the topic's: refused by validation, by reason
        return good, bad


def _rows(kind: str, records: list) -> list[tuple]:
    return records if isinstance(records, BuiltRows) else [row_values(kind, r) for r in records]


def typed_records(kind: RecordKind, device: str, payload: bytes) -> list | None:
    """The fast path of decoding a batch: its envelope and records parsed and validated in one pass, when it is a
    batch of `kind` from `device` (the topic's) whose records all name that device; None otherwise (the caller
    then decodes it step by step, which finds the reasons)."""
    try:
        typed = _typed_batch(kind).model_validate_json(payload)
    except ValidationError:
        return None
    if (typed.version == PROTOCOL_VERSION and typed.device == device and typed.kind == kind
            and [getattr(r, "device", None) for r in typed.records].count(device) == len(typed.records)):
        return typed.records
    return None


@functools.cache
def _typed_batch(kind: RecordKind) -> type[Batch]:
    """A Batch whose records are validated as RECORD_TYPES[kind] in the same pass as the envelope."""
    return create_model(f"{kind.title()}Batch", __base__=Batch,
                        records=(list[RECORD_TYPES[kind]], ...))  # type: ignore[valid-type]


@functools.cache
def _list_adapter(model: type) -> TypeAdapter:
    return TypeAdapter(list[model])  # type: ignore[valid-type]
