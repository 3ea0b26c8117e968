"""Decoding processes (`ingest_decode_processes`, fleet/ingest_decode.py): batches of predictions decoded, screened
and turned into rows in processes of their own must change nothing but where the CPU is spent. The same messages
through ingest with and without them give the same rows, the same acknowledgements, the same refusals and
malformed counts with the same reasons, record by record; a decoding process that dies is replaced and loses
nothing; the service's processes end with it."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from fleet.acks import acks_of
from fleet.config import FleetConfig
from fleet.devices import Devices
from fleet.ingest import BuiltRows, Ingest
from fleet.ingest_decode import DecoderPool
from fleet.protocol import Batch, PredictionRecord, ReviewRecord, Topics, encode
from fleet.service import FleetService
from fleet.store import Store, row_values
from fleet.validation import RecordLimits
from tests.fleet.devicesim import batch, client, predictions, publish_until_acked, wait_for
from tests.fleet.test_validation import RULES

T = Topics()
DEV = "cam-1"


def _bad_records() -> list[tuple[dict[str, Any], str]]:
    """One bad prediction per validation rule (times relative to now: the rules' own are for a fixed clock)."""
    now = datetime.now(timezone.utc)
    out = [(kw, reason) for kw, reason in RULES if "created_at" not in kw]
    out += [({"created_at": (now + timedelta(hours=1)).isoformat()}, "timestamp_in_future"),
            ({"created_at": (now - timedelta(days=40)).isoformat()}, "timestamp_too_old"),
            ({"created_at": "2026-11-28 12:00"}, "bad_timestamp")]
    return out


def _messages() -> list[tuple[str, bytes, bool]]:
    """A stream with everything ingest treats apart: good batches, one bad record per rule among good ones, a
    record that fails the schema, not JSON, another device's batch, a retained batch, an empty payload, a
    redelivery, verdicts on predictions of earlier messages, status and reported state."""
    topic = T.device(DEV, "predictions")
    msgs: list[tuple[str, bytes, bool]] = []
    first = predictions(DEV, 40, seed=1)
    msgs.append((topic, batch(DEV, "predictions", first), False))
    for n, (kw, _reason) in enumerate(_bad_records()):
        recs = predictions(DEV, 5, seed=100 + n)
        recs[2] = {**recs[2], **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
        # built as JSON text: NaN and infinities go out as the tokens a device's JSON encoder writes
        msgs.append((topic, json.dumps({"schema": "shadowline.batch", "version": 1, "device": DEV,
                                        "kind": "predictions", "records": recs}).encode(), False))
    schema_bad = predictions(DEV, 3, seed=7)
    schema_bad[1]["decision"] = "maybe"
    msgs.append((topic, batch(DEV, "predictions", schema_bad), False))
    msgs.append((topic, b"{not json", False))
    msgs.append((topic, batch("cam-2", "predictions", predictions("cam-2", 2)), False))
    msgs.append((topic, batch(DEV, "predictions", predictions(DEV, 3, seed=8)), True))  # retained: refused
    msgs.append((topic, b"", False))
    msgs.append((topic, batch(DEV, "predictions", first[:10] + predictions(DEV, 10, seed=9)), False))  # redelivery
    verdicts = [ReviewRecord(prediction_id=p["id"], device=DEV, inspector="ann", verdict="confirm",
                             override=False, model_decision=p["decision"], release=p["release"],
                             revision=p["revision"]).model_dump(mode="json") for p in first[:4]]
    verdicts.append({**verdicts[0], "id": "v-unknown", "prediction_id": "no-such-prediction"})
    msgs.append((T.device(DEV, "reviews"), batch(DEV, "reviews", verdicts), False))
    msgs.append((T.device(DEV, "status"), b"online", True))
    for seed in range(20, 24):  # after the last verdicts: these go to the decoding processes
        msgs.append((topic, batch(DEV, "predictions", predictions(DEV, 30, seed=seed)), False))
    mixed = Batch(device=DEV, kind="predictions", records=predictions(DEV, 4, seed=30))
    mixed.records[3]["device"] = "cam-9"  # a record of another device inside a good envelope
    msgs.append((topic, encode(mixed), False))
    return msgs


def _ingest(path: Path, now: datetime | None = None) -> Ingest:
    store = Store(path)
    ingest = Ingest(store, Devices(store), T)
    if now is not None:  # refusals name how far off a time is: the same receipt time for both runs
        ingest.validator.now = lambda: now
    return ingest


def _run(ingest: Ingest, messages: list, group: int) -> tuple[list[bool], list, list[BuiltRows | list]]:
    """Prepare and write `messages` in groups of `group` as the consumer does: (ok, acks, pending record lists)."""
    ok, acks, pending = [], [], []
    for i in range(0, len(messages), group):
        prepared = ingest.prepare(messages[i:i + group])
        ok += ingest.write(prepared)
        # the acks as sent, but for the time they were sent at
        acks += [(t, {k: v for k, v in json.loads(p).items() if k != "sent_at"}) for t, p in acks_of(prepared, T)]
        pending += [recs for *_, recs in prepared.pending]
    return ok, acks, pending


def _contents(ingest: Ingest) -> dict:
    st = ingest.store
    return {"stats": ingest.stats.as_dict(), "refused_ids": ingest.stats.refused_ids,
            "predictions": st.rows("SELECT * FROM predictions ORDER BY id"),
            "reviews": st.rows("SELECT * FROM reviews ORDER BY id"),
            "malformed": {t: (r["count"], r["last_error"]) for t, r in st.malformed().items()},
            "refused": [(r["device"], r["reason"], r["count"], r["last_error"]) for r in st.refused()],
            "device": {k: v for k, v in (st.get("devices", DEV) or {}).items() if k not in ("first_seen", "last_seen")}}


@pytest.fixture(scope="module")
def pool():
    p = DecoderPool(2, RecordLimits()).start()
    yield p
    p.stop()


@pytest.mark.parametrize("group", [50, 3, 1])
def test_decoding_processes_change_nothing_record_by_record(tmp_path, pool, group):
    messages = _messages()
    now = datetime.now(timezone.utc)
    alone, offloaded = _ingest(tmp_path / "alone.db", now), _ingest(tmp_path / "offloaded.db", now)
    offloaded.decoder = pool
    try:
        ok_a, acks_a, _ = _run(alone, messages, group)
        ok_o, acks_o, pending_o = _run(offloaded, messages, group)
        assert ok_o == ok_a and acks_o == acks_a
        want, got = _contents(alone), _contents(offloaded)
        for key in want:
            assert got[key] == want[key], key
        # not vacuous: the refusals of every rule, the malformed messages and the verdicts are all there, and the
        # good batches after the last verdicts were built by the decoding processes
        reasons = {reason for _, reason, *_ in want["refused"]}
        assert {r for _, r in _bad_records()} | {"retained", "device_mismatch", "unknown_prediction"} <= reasons
        assert want["malformed"][T.device(DEV, "predictions")][0] == 3 and len(want["reviews"]) == 4
        assert sum(isinstance(p, BuiltRows) for p in pending_o) >= 4
    finally:
        alone.store.close()
        offloaded.store.close()


def test_the_rows_of_a_decoding_process_are_the_rows_ingest_builds(pool):
    recs = predictions(DEV, 25, seed=3)
    bad = [dict(r) for r in recs]
    bad[5]["latency_ms"] = {"total": -1.0}
    got = pool.rows([(DEV, batch(DEV, "predictions", recs)), (DEV, batch(DEV, "predictions", bad)),
                     (DEV, b"[]"), ("cam-2", batch(DEV, "predictions", recs))])
    assert got[0] == [row_values("predictions", PredictionRecord.model_validate(r)) for r in recs]
    assert got[1:] == [None, None, None]  # refused, malformed, another device's: left to ingest, which says why


def test_a_decoding_process_that_dies_is_replaced_and_nothing_is_lost(tmp_path):
    pool = DecoderPool(1, RecordLimits()).start()
    ingest = _ingest(tmp_path / "f.db")
    ingest.decoder = pool
    try:
        topic = T.device(DEV, "predictions")
        assert ingest.handle_many([(topic, batch(DEV, "predictions", predictions(DEV, 10, seed=1)))]) == [True]
        (dead,) = pool.pids
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: _gone(dead), 10, "the decoding process to die")
        assert ingest.handle_many([(topic, batch(DEV, "predictions", predictions(DEV, 10, seed=2)))]) == [True]
        assert ingest.handle_many([(topic, batch(DEV, "predictions", predictions(DEV, 10, seed=3)))]) == [True]
        assert ingest.store.count("predictions") == 30 and ingest.stats.malformed == 0
        assert pool.restarts == 1 and pool.pids != [dead]
    finally:
        pool.stop()
        ingest.store.close()
    assert pool.pids == []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_the_service_decodes_in_processes_through_mosquitto_and_ends_them(config: FleetConfig, mosquitto):
    """The service's decoding processes (verdicts right behind their predictions through them: test_ingest.py)
    run while it does and end with it."""
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "ingest_decode_processes": 2})).start()
    c = client(mosquitto.url, "dev-d")
    try:
        assert svc.consumer is not None and svc.consumer.decoders is not None
        pids = svc.consumer.decoders.pids
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        wait_for(c.is_connected, 10)
        t = svc.fleet.topics
        for seed in range(4):
            publish_until_acked(c, t.device("dev-d", "predictions"), batch("dev-d", "predictions",
                                                                           predictions("dev-d", 25, seed=seed)))
        wait_for(lambda: svc.fleet.ingest.stats.records >= 100, 30, "every record stored")
        assert svc.fleet.store.count("predictions") == 100 and svc.fleet.ingest.stats.malformed == 0
    finally:
        c.disconnect()
        c.loop_stop()
        svc.stop()
    assert all(_gone(p) for p in pids)
