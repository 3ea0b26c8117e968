"""Validation at the edge of ingest (fleet/validation.py): the rules one by one, and the property that matters:
whatever devices send, through the real ingest into the real store, no page of the fleet and no `/metrics` answers
500 (hypothesis generates the records, NaN, infinities, odd times and unicode included)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet.api import create_app
from fleet.protocol import PredictionRecord, ReviewRecord, Topics
from fleet.validation import RecordLimits, RecordValidator
from tests.attacks.pages import render_everything

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def _validator(**limits: Any) -> RecordValidator:
    return RecordValidator(RecordLimits(**limits), lambda device, ids: {}, now=lambda: NOW)


def _pred(**kw: Any) -> PredictionRecord:
    base = {"device": "cam-1", "source": "folder:a.png", "release": "seal", "revision": 1, "mode": "shadow",
            "decision": "pass", "created_at": NOW.isoformat(timespec="milliseconds"), "latency_ms": {"total": 5.0}}
    return PredictionRecord.model_validate({**base, **kw})


RULES = [
    ({"latency_ms": {"total": float("nan")}}, "not_finite"),
    ({"top_score": float("inf")}, "not_finite"),
    ({"thresholds": {"verify": {"default": float("-inf")}}}, "not_finite"),
    ({"latency_ms": {"decode": -0.001}}, "negative_latency"),
    ({"created_at": (NOW + timedelta(seconds=301)).isoformat()}, "timestamp_in_future"),
    ({"created_at": (NOW - timedelta(days=31)).isoformat()}, "timestamp_too_old"),
    ({"created_at": "2026-11-28 12:00"}, "bad_timestamp"),
    ({"id": "a b"}, "bad_id"),
    ({"disagrees_with": "../x"}, "bad_id"),
    ({"revision": 2**31}, "bad_revision"),
    ({"error": "e" * 5000}, "too_large"),
    ({"degraded": "d" * 5000}, "too_large"),
    ({"stages": [{"role": "verify", "bundle": "b-v1.0", "variant": "v" * 5000}]}, "too_large"),
    ({"thresholds": {"a": [[[[[[[[[1]]]]]]]]]}}, "too_large"),
    ({"latency_ms": {"total": 3_600_001.0}}, "latency_too_large"),
    ({"stages": [{"role": "verify", "bundle": "b-v1.0", "latency_ms": -1.0}]}, "negative_latency"),
    ({"flagged": [("s" * 5000, 0.5)]}, "too_large"),
    ({"models": {"verify": "m" * 5000}}, "too_large"),
    ({"release": "../etc"}, "bad_id"),
    ({"device": "cam-2"}, "device_mismatch"),
]


@pytest.mark.parametrize("kw, reason", RULES)
def test_each_rule_refuses_with_its_reason(kw, reason):
    good, refused = _validator().screen("predictions", "cam-1", [_pred(**kw)], {})
    assert good == [] and [r.reason for r in refused] == [reason], refused


@pytest.mark.parametrize("kw, reason", RULES)
def test_one_bad_record_in_a_large_batch_is_the_only_one_refused(kw, reason):
    """A whole batch is checked at once when every record passes (the common case); one bad record among 300 good
    ones is still refused alone, with its reason, and the others pass unchanged and in order."""
    batch = [_pred(id=f"r-{i}", thresholds={"default": 0.5, "n": 10**400}, flagged=[("scratch", 0.75)])
             for i in range(300)]
    batch[150] = _pred(**{"id": "bad-1", **kw})
    v = _validator()
    good, refused = v.screen("predictions", "cam-1", batch, pending := {})
    assert good == batch[:150] + batch[151:] and v._fast(good, "cam-1", NOW)  # the good ones alone: at once
    assert [r.reason for r in refused] == [reason] and refused[0].detail.startswith("predictions[150] ")
    assert set(pending) == {r.id for r in good}


def test_a_batch_passes_as_its_records_pass_one_by_one():
    """What the record-by-record checks accept, the batch accepts too (the quick check is only stricter, then
    hands the batch over): a trailing newline in an id (re's `$`), times in another offset (made UTC)."""
    odd = [_pred(id="r-1\n"), _pred(id="r-2", created_at="2026-11-28T13:00:00.5+01:00"), _pred(id="r-3")]
    alone = [_validator().screen("predictions", "cam-1", [r], {}) for r in odd]
    good, refused = _validator().screen("predictions", "cam-1", odd, {})
    assert refused == [] and good == [g for gs, _ in alone for g in gs]
    assert good[1].created_at == "2026-11-28T12:00:00.500+00:00"


def test_good_records_pass_and_times_become_utc():
    rec = _pred(created_at="2026-11-28T13:00:00.5+01:00")
    (got,), refused = _validator().screen("predictions", "cam-1", [rec], {})
    assert refused == [] and got.created_at == "2026-11-28T12:00:00.500+00:00"
    (same,), _ = _validator().screen("predictions", "cam-1", [_pred()], {})
    assert same.created_at == NOW.isoformat(timespec="milliseconds")


@pytest.mark.parametrize("token, nonfinite", [
    ("NaN", True), ("-Infinity", True), ("1e999", True), ("1E+0309", True), ("-2.5e400", True),
    ("1" * 250 + "e99", True), ("9" * 400, True),  # overflow a double without a 3-digit exponent
    ("1.5e3", False), ("1e-999", False), ("123456", False)])
@pytest.mark.parametrize("where", ["latency_ms", "flagged", "scores", "top_score"])
def test_every_number_that_parses_non_finite_is_refused_wherever_it_is(token, nonfinite, where):
    """Numbers as ingest parses them from the wire (a 400-digit integer becomes an infinite float), in each typed
    float field the quick checks cover: refused as not_finite when they parse non-finite, accepted otherwise."""
    fields = {"latency_ms": '"latency_ms":{"total":%s}', "flagged": '"flagged":[["scratch",%s]]',
              "scores": '"stages":[{"role":"verify","bundle":"b-v1.0","scores":{"ok":%s}}]',
              "top_score": '"top_score":%s'}
    text = _pred(id="rec-1").model_dump_json()
    for name in ("latency_ms", "flagged", "stages", "top_score"):  # drop the field, then write it as the case says
        text = re.sub(f'"{name}":(\\{{[^}}]*\\}}|\\[\\]|null|[0-9.]+),', "", text, count=1)
    rec = PredictionRecord.model_validate_json(text[:-1] + "," + fields[where] % token + "}")
    good, refused = _validator().screen("predictions", "cam-1", [rec], {})
    assert [r.reason for r in refused] == (["not_finite"] if nonfinite else []), (where, token[:20], refused)


def test_limits_are_configurable():
    late = _pred(created_at=(NOW + timedelta(minutes=30)).isoformat())
    assert _validator().screen("predictions", "cam-1", [late], {})[0] == []
    assert len(_validator(max_future_skew_s=3600).screen("predictions", "cam-1", [late], {})[0]) == 1


def test_verdicts_take_their_facts_from_the_prediction():
    pred = _pred(id="p-1", decision="flag", flagged=[("scratch", 0.9)], top_label="scratch", top_score=0.9)
    v = RecordValidator(RecordLimits(), lambda device, ids: {"p-1": pred} if device == "cam-1" else {},
                        now=lambda: NOW)
    claim = ReviewRecord(prediction_id="p-1", device="cam-1", inspector="ann", verdict="confirm", override=True,
                         model_decision="pass", release="evil", revision=9, created_at=NOW.isoformat())
    (rev,), refused = v.screen("reviews", "cam-1", [claim], {})
    assert refused == [] and rev.override is False and rev.model_decision == "flag" and rev.release == "seal"
    other = claim.model_copy(update={"device": "cam-2"})
    assert v.screen("reviews", "cam-2", [other], {})[1][0].reason == "unknown_prediction"
    fp = claim.model_copy(update={"prediction_id": "p-1", "verdict": "missed_defect", "defect_class": "scratch"})
    (rev,), _ = v.screen("reviews", "cam-1", [fp], {})
    assert rev.override is False  # the model flagged that class: no override whatever the client says


# -- the property: nothing in the store breaks a page --------------------------------------------------------------
floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6) | st.just(1e308)
texts = st.text(max_size=40) | st.sampled_from(["", "<script>alert(1)</script>", "a\u2028b\x85c", "../../etc",
                                                "\x00", "ε" * 30])
times = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1),
                 timezones=st.just(timezone.utc)).map(lambda t: t.isoformat()),
    st.just("not-a-date"), texts,
    st.integers(-400, 400).map(lambda s: (datetime.now(timezone.utc) + timedelta(seconds=s)).isoformat()))
records = st.fixed_dictionaries({
    "id": st.uuids().map(str) | texts, "device": st.just("cam-p") | texts, "created_at": times,
    "source": texts, "release": st.sampled_from(["seal", "x"]) | texts, "revision": st.integers(-5, 2**40),
    "mode": st.sampled_from(["shadow", "production", "live"]), "role": st.sampled_from(["active", "candidate"]),
    "decision": st.sampled_from(["pass", "flag", "error", "maybe"]),
    "top_label": st.none() | texts, "top_score": st.none() | floats,
    "flagged": st.lists(st.tuples(texts, floats), max_size=3),
    "latency_ms": st.dictionaries(st.sampled_from(["total", "decode", "verify"]) | texts, floats, max_size=3),
    "thresholds": st.dictionaries(texts, floats | texts, max_size=3),
    "stages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["screen", "verify"]), "bundle": texts,
                                              "scores": st.dictionaries(texts, floats, max_size=4),
                                              "latency_ms": floats}), max_size=2),
})


VALID = [{"id": f"00000000-0000-4000-8000-00000000000{i}", "device": "cam-p", "source": f"folder:{i}.png",
          "created_at": "now", "release": "seal", "revision": 1, "mode": "shadow", "role": "active",
          "decision": d, "top_label": "scratch", "top_score": 0.7, "flagged": [["scratch", 0.7]] if d == "flag" else [],
          "latency_ms": {"total": 4.0}, "thresholds": {"verify": {"default": 0.5}},
          "stages": [{"role": "verify", "bundle": "b-v1.0", "scores": {"scratch": 0.7}, "latency_ms": 3.0}]}
         for i, d in enumerate(["pass", "flag", "error"])]


@pytest.fixture
def app(fleet):
    """The fleet's app, built once for all examples (it keeps no state of its own: every page reads the store)."""
    return create_app(fleet)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@example(batch=VALID, kind="predictions")
@given(batch=st.lists(records, min_size=1, max_size=6), kind=st.sampled_from(["predictions", "reviews"]))
def test_whatever_devices_send_no_page_answers_500(fleet, app, tokens, batch, kind):
    topics: Topics = fleet.topics
    batch = [{**r, "created_at": datetime.now(timezone.utc).isoformat()} if r.get("created_at") == "now" else r
             for r in batch]
    if kind == "reviews":
        batch = [{**r, "prediction_id": r["id"], "inspector": "ann", "verdict": "confirm", "override": True,
                  "model_decision": r["decision"]} for r in batch]
        for r in batch:
            for k in ("source", "mode", "role", "decision", "flagged", "latency_ms", "stages"):
                r.pop(k)
    payload = json.dumps({"schema": "shadowline.batch", "version": 1, "device": "cam-p", "kind": kind,
                          "records": batch}).encode()
    before = fleet.store.count(kind)
    fleet.ingest.handle_many([(topics.device("cam-p", kind), payload, False)])
    for rec in (json.loads(r["record"]) for r in fleet.store.rows(f"SELECT record FROM {kind}")):
        assert rec["device"] == "cam-p"
    assert fleet.store.count(kind) - before <= len(batch)
    if batch is VALID or batch[0]["id"] == VALID[0]["id"]:
        assert fleet.store.count("predictions") - before == 3  # the valid batch is stored, then every page rendered
    with TestClient(app) as client:
        statuses = render_everything(client, tokens["admin"], ("/dashboard/shadow?release=seal@1",
                                                               "/api/devices/cam-p", "/dashboard/devices/cam-p"))
    assert all(s < 500 for s in statuses.values()), statuses
