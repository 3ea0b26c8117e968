"""Validation of records at the edge of ingest, after their schema: what a schema cannot say. Finite numbers
only (JSON parsers accept NaN, Infinity and 1e999), latencies >= 0, timestamps within a configurable skew of the
receipt time (an offline device sends old records, never future ones), well-formed ids, bounded sizes, and
verdicts that name an existing prediction of the same device, whose override the fleet computes itself. A refused
record is never stored; it is counted per device and reason where an admin sees it (the store's `refused` table:
`GET /api/ingest`, the dashboard, `/metrics`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol import (
    DEVICE_ID_RE,
    AlertRecord,
    EventRecord,
    MetricsRecord,
    PredictionRecord,
    ProtocolError,
    RecordKind,
    ReviewRecord,
    verdict_override,
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")  # release, bundle, label-free names
# ID_RE and UTC_MS over a whole batch at once: every value followed by a newline, which neither pattern's characters
# include, so the joined text matches exactly when each value matches (stricter than ID_RE.match, whose `$` also
# accepts one trailing newline: such a batch goes through the record-by-record checks)
IDS_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\n)*")
UTC_MS_ALL = re.compile(r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\n)*")

# Reasons are short and fixed: they label a Prometheus counter and a dashboard table.
REASONS = ("schema", "not_finite", "negative_latency", "latency_too_large", "bad_timestamp", "timestamp_in_future",
           "timestamp_too_old", "bad_id", "too_large", "bad_revision", "unknown_prediction", "verdict_mismatch",
           "device_mismatch", "retained", "batch_too_large")


class RecordLimits(BaseModel):
    """What ingest accepts beyond the schema (fleet config `record_limits`)."""

    model_config = ConfigDict(extra="forbid")
    max_future_skew_s: float = Field(300.0, ge=0, description="a record may be this far ahead of the receipt time "
                                                              "(device clocks drift)")
    max_age_days: float = Field(30.0, gt=0, description="older records are refused (an outbox holds days of an "
                                                        "offline device, not months)")
    max_latency_ms: float = Field(3_600_000.0, gt=0, description="a latency above this is a broken clock")
    max_records_per_batch: int = Field(10_000, ge=1)
    max_text: int = Field(4096, ge=64, description="characters in any one string of a record")
    max_entries: int = Field(5000, ge=1, description="entries in any one list or mapping of a record "
                                                     "(scores of 1000 ImageNet classes fit)")
    max_depth: int = Field(8, ge=2, description="nesting of free-form fields (thresholds, event details)")


@dataclass
class Refusal:
    reason: str
    detail: str


class Refused(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.refusal = Refusal(reason, detail)


def parse_time(value: str) -> datetime:
    """An ISO-8601 time with a UTC offset (a trailing Z accepted); Refused otherwise."""
    if not isinstance(value, str) or len(value) > 40:
        raise Refused("bad_timestamp", f"created_at {str(value)[:40]!r} is not an ISO-8601 time")
    try:
        t = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise Refused("bad_timestamp", f"created_at {value!r} is not an ISO-8601 time") from None
    if t.tzinfo is None:
        raise Refused("bad_timestamp", f"created_at {value!r} has no UTC offset")
    return t


def _finite(values: Iterable[float]) -> bool:
    """Whether every number of `values` is finite, in one C loop: a NaN or an infinity makes the sum NaN or
    infinite. (Finite numbers whose sum overflows also answer False: the caller then walks them for the exact
    reason, and finds none.)"""
    return math.isfinite(sum(values))


def _bad_value(v: Any, limits: RecordLimits, depth: int) -> str | None:
    """Why a value is refused (a non-finite number, an over-long string, an over-large or over-deep list or
    mapping, anywhere inside it), or None. No strings are built on the way: most records pass."""
    t = type(v)
    if t is float:
        return None if math.isfinite(v) else f"not_finite:{v}"
    if t is str:
        return None if len(v) <= limits.max_text else f"too_large:{len(v)} characters"
    if t is list or t is tuple:
        if depth >= limits.max_depth or len(v) > limits.max_entries:
            return f"too_large:{len(v)} entries or nested {depth} deep"
        for x in v:
            if type(x) is not int and (why := _bad_value(x, limits, depth + 1)):
                return why
        return None
    if t is dict:
        if depth >= limits.max_depth or len(v) > limits.max_entries:
            return f"too_large:{len(v)} entries or nested {depth} deep"
        for k, x in v.items():
            if len(k) > limits.max_text:
                return f"too_large:a key of {len(k)} characters"
            if type(x) is not int and (why := _bad_value(x, limits, depth + 1)):
                return why
        return None
    if isinstance(v, BaseModel):
        for x in v.__dict__.values():
            if type(x) is not int and (why := _bad_value(x, limits, depth + 1)):
                return why
    return None


def _refuse(name: str, why: str | None) -> None:
    if why is not None:
        reason, _, detail = why.partition(":")
        raise Refused(reason, f"{name}: {detail}")


def _check_fields(rec: BaseModel, limits: RecordLimits) -> None:
    for name, value in rec.__dict__.items():
        if type(value) is not int:
            _refuse(name, _bad_value(value, limits, 1))


def _short_keys(d: dict, limits: RecordLimits) -> bool:
    """A mapping within the entry limit whose keys are all within the text limit (lengths taken in C)."""
    return len(d) <= limits.max_entries and (not d or max(map(len, d)) <= limits.max_text)


def _check_prediction_fields(rec: PredictionRecord, limits: RecordLimits) -> None:
    """The bulk of ingest: the typed fields by hand, the free-form ones (thresholds, detections, hits) walked. The
    fields whose types the schema fixed (models: str -> str, latency_ms: str -> float, flagged: (str, float) pairs,
    scores) are checked in C: their lengths by max(map(len)), their numbers by one sum (`_finite`); a field that
    fails that quick check is walked for the exact reason."""
    mt = limits.max_text
    for name in ("source", "top_label", "error", "degraded"):
        v = getattr(rec, name)
        if v is not None and len(v) > mt:
            raise Refused("too_large", f"{name}: {len(v)} characters")
    models, latency, flagged = rec.models, rec.latency_ms, rec.flagged
    if not (_short_keys(models, limits) and (not models or max(map(len, models.values())) <= mt)):
        _refuse("models", _bad_value(models, limits, 1))
    _refuse("thresholds", _bad_value(rec.thresholds, limits, 1))
    if flagged and (len(flagged) > limits.max_entries or max(len(c) for c, _ in flagged) > mt
                    or not _finite(s for _, s in flagged)):
        _refuse("flagged", _bad_value(flagged, limits, 1))
    if not (_short_keys(latency, limits) and _finite(latency.values())):
        _refuse("latency_ms", _bad_value(latency, limits, 1))
    if rec.top_score is not None and not math.isfinite(rec.top_score):
        raise Refused("not_finite", f"top_score: {rec.top_score}")
    if len(rec.stages) > 8:
        raise Refused("too_large", f"stages: {len(rec.stages)} entries")
    _check_stages(rec.stages, limits)


def _check_stages(stages: list, limits: RecordLimits) -> None:
    mt = limits.max_text
    for i, st in enumerate(stages):
        for name in ("bundle", "variant"):
            v = getattr(st, name)
            if v is not None and len(v) > mt:
                raise Refused("too_large", f"stages[{i}].{name}: {len(v)} characters")
        if st.scores is not None:
            if len(st.scores) > limits.max_entries:
                raise Refused("too_large", f"stages[{i}].scores: {len(st.scores)} entries")
            if max(map(len, st.scores), default=0) > mt or not _finite(st.scores.values()):
                _refuse(f"stages[{i}].scores", _bad_value(st.scores, limits, 2))
        for name in ("detections", "hits"):
            v = getattr(st, name)
            if v:
                _refuse(f"stages[{i}].{name}", _bad_value(v, limits, 2))


def _predictions_pass(records: list[PredictionRecord], device: str, lo: str, hi: str,
                      limits: RecordLimits) -> bool:
    """Whether every prediction of a batch passes every check of `check_common` and `check_prediction` unchanged
    (created_at already in the devices' UTC layout, within lo..hi), found with one C-level pass per field over the
    whole batch instead of a dozen Python calls per record. Conservative: False (anything unusual, even a record
    that would pass) sends the batch through the record-by-record checks, which find the reasons."""
    mt, me, n = limits.max_text, limits.max_entries, len(records)
    ids = [r.id for r in records]
    created = [r.created_at for r in records]
    if not (IDS_RE.fullmatch("\n".join(ids) + "\n") and UTC_MS_ALL.fullmatch("\n".join(created) + "\n")
            and lo <= min(created) and max(created) <= hi):
        return False
    if [r.device for r in records].count(device) != n:
        return False
    revisions = [r.revision for r in records]
    if not (0 <= min(revisions) and max(revisions) < 2**31):
        return False
    if not all(NAME_RE.match(x) for x in {r.release for r in records}):
        return False
    texts = [v for r in records for v in (r.source, r.top_label, r.error, r.degraded) if v is not None]
    if texts and max(map(len, texts)) > mt:
        return False
    models = [r.models for r in records]
    if max(map(len, models)) > me or max(map(len, chain.from_iterable(models)), default=0) > mt \
            or max(map(len, chain.from_iterable(m.values() for m in models)), default=0) > mt:
        return False
    latency = [r.latency_ms for r in records]
    values = list(chain.from_iterable(lat.values() for lat in latency))
    if max(map(len, latency)) > me or max(map(len, chain.from_iterable(latency)), default=0) > mt or (
            values and not (_finite(values) and 0 <= min(values) and max(values) <= limits.max_latency_ms)):
        return False
    flagged = [r.flagged for r in records]
    pairs = list(chain.from_iterable(flagged))
    if pairs and (max(map(len, flagged)) > me or max(len(c) for c, _ in pairs) > mt
                  or not _finite(s for _, s in pairs)):
        return False
    scores = [r.top_score for r in records if r.top_score is not None]
    if scores and not _finite(scores):
        return False
    if not all(ID_RE.match(r.disagrees_with) for r in records if r.disagrees_with is not None):
        return False
    thresholds = [r.thresholds for r in records]
    numbers = list(chain.from_iterable(t.values() for t in thresholds))
    # the usual thresholds map names to numbers: checked at once (a huge integer overflows the sum: walked below)
    try:
        simple = set(map(type, numbers)) <= {float, int} and max(map(len, thresholds)) <= me \
            and max(map(len, chain.from_iterable(thresholds)), default=0) <= mt and _finite(numbers)
    except OverflowError:
        simple = False
    try:
        for r in records:
            if r.thresholds and not simple:
                _refuse("thresholds", _bad_value(r.thresholds, limits, 1))
            if r.stages:
                if len(r.stages) > 8:
                    return False
                _check_stages(r.stages, limits)
                for i, st in enumerate(r.stages):
                    _latency(st.latency_ms, f"stages[{i}].latency_ms", limits)
    except Refused:
        return False
    return True


def _latency(value: float, where: str, limits: RecordLimits) -> None:
    if not math.isfinite(value):
        raise Refused("not_finite", f"{where} is {value}")
    if value < 0:
        raise Refused("negative_latency", f"{where} is {value} ms")
    if value > limits.max_latency_ms:
        raise Refused("latency_too_large", f"{where} is {value} ms (at most {limits.max_latency_ms:g})")


PredictionLookup = Callable[[str, list[str]], dict[str, PredictionRecord]]


class RecordValidator:
    """Screens validated records of one device. `lookup(device, ids)` finds stored predictions (for verdicts)."""

    def __init__(self, limits: RecordLimits, lookup: PredictionLookup,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.limits, self.lookup, self.now = limits, lookup, now
        self._bounds_for: tuple[datetime | None, tuple[str, str]] = (None, ("", ""))

    def check_common(self, rec: Any, device: str, received: datetime) -> Any:
        """The checks every record kind shares; returns the record with created_at in UTC (the store orders and
        filters on that text, so one offset for all)."""
        lim = self.limits
        if not isinstance(rec.id, str) or not ID_RE.match(rec.id):
            raise Refused("bad_id", f"id {str(rec.id)[:80]!r} is not a well-formed record id")
        if rec.device != device:
            raise Refused("device_mismatch", f"record of {str(rec.device)[:80]!r} on the topic of {device!r}")
        created = rec.created_at
        lo, hi = self._bounds(received)
        # fast path: the layout devices write (now_iso: UTC, milliseconds) compares as text
        utc_ms = type(created) is str and UTC_MS.match(created) is not None
        if not (utc_ms and lo <= created <= hi):
            t = parse_time(created)
            if t - received > timedelta(seconds=lim.max_future_skew_s):
                raise Refused("timestamp_in_future", f"created_at {created} is {(t - received).total_seconds():.0f}"
                                                     f" s after its receipt (at most {lim.max_future_skew_s:g})")
            if received - t > timedelta(days=lim.max_age_days):
                raise Refused("timestamp_too_old", f"created_at {created} is older than {lim.max_age_days:g} days")
            created = t.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        revision = getattr(rec, "revision", 0)
        if not 0 <= revision < 2**31:
            raise Refused("bad_revision", f"revision {revision} is out of range")
        release = getattr(rec, "release", None)
        if release is not None and not NAME_RE.match(release):
            raise Refused("bad_id", f"release {release[:80]!r} is not a well-formed name")
        if isinstance(rec, PredictionRecord):
            _check_prediction_fields(rec, lim)
        else:
            _check_fields(rec, lim)
        return rec if created == rec.created_at else rec.model_copy(update={"created_at": created})

    def _fast(self, records: list[PredictionRecord], device: str, received: datetime) -> bool:
        """`_predictions_pass` at `received`; a value of an unexpected type (records built by hand rather than
        validated) answers False too."""
        lo, hi = self._bounds(received)
        try:
            return _predictions_pass(records, device, lo, hi, self.limits)
        except (TypeError, AttributeError, ValueError, OverflowError):
            return False

    def _bounds(self, received: datetime) -> tuple[str, str]:
        """The oldest and newest acceptable created_at, as text in the devices' layout."""
        if self._bounds_for[0] != received:
            lim = self.limits
            lo = (received - timedelta(days=lim.max_age_days)).astimezone(timezone.utc)
            hi = (received + timedelta(seconds=lim.max_future_skew_s)).astimezone(timezone.utc)
            self._bounds_for = (received, (lo.isoformat(timespec="milliseconds"),
                                           hi.isoformat(timespec="milliseconds")))
        return self._bounds_for[1]

    def check_prediction(self, rec: PredictionRecord) -> None:
        """Latencies finite, >= 0 and at most max_latency_ms: the common case is one sum, one min and one max (in
        C), and only a record outside the range is gone through latency by latency for the reason."""
        lat = rec.latency_ms
        if lat and not (_finite(lat.values()) and 0 <= min(lat.values()) <= max(lat.values())
                        <= self.limits.max_latency_ms):
            for k, v in lat.items():
                _latency(v, f"latency_ms.{k}", self.limits)
        for i, st in enumerate(rec.stages):
            _latency(st.latency_ms, f"stages[{i}].latency_ms", self.limits)
        if rec.disagrees_with is not None and not ID_RE.match(rec.disagrees_with):
            raise Refused("bad_id", f"disagrees_with {rec.disagrees_with[:80]!r} is not a record id")

    def review_of(self, rec: ReviewRecord, pred: PredictionRecord | None) -> ReviewRecord:
        """The review as the fleet computes it from its prediction: override, decision, release and model facts
        come from the prediction, never from the client."""
        if not ID_RE.match(rec.prediction_id):
            raise Refused("bad_id", f"prediction_id {rec.prediction_id[:80]!r} is not a record id")
        if pred is None:
            raise Refused("unknown_prediction", f"verdict on prediction {rec.prediction_id!r}, which the fleet has "
                                                f"no record of from device {rec.device!r}")
        try:
            override = verdict_override(rec.verdict, pred.decision, [c for c, _ in pred.flagged], rec.defect_class)
        except ProtocolError as err:
            raise Refused("verdict_mismatch", str(err)) from err
        return rec.model_copy(update={
            "override": override, "model_decision": pred.decision, "release": pred.release,
            "revision": pred.revision, "models": dict(pred.models), "thresholds": dict(pred.thresholds),
            "top_label": pred.top_label, "top_score": pred.top_score})

    def screen(self, kind: RecordKind, device: str, records: Iterable[Any], pending: dict[str, PredictionRecord],
               received: datetime | None = None) -> tuple[list[Any], list[Refusal]]:
        """(records to store, refusals). `pending`: predictions of this ingest group not yet committed, by id
        (a verdict may arrive in the same group as its prediction); accepted predictions are added to it."""
        received = received or self.now()
        records = list(records)
        if len(records) > self.limits.max_records_per_batch:
            return [], [Refusal("batch_too_large", f"{len(records)} records in one batch "
                                                   f"(at most {self.limits.max_records_per_batch})")] * len(records)
        good: list[Any] = []
        refused: list[Refusal] = []
        device_ok = DEVICE_ID_RE.match(device) is not None
        if (device_ok and kind == "predictions" and records
                and all(type(r) is PredictionRecord for r in records) and self._fast(records, device, received)):
            pending.update((r.id, r) for r in records)
            return records, []
        wanted = [r.prediction_id for r in records if isinstance(r, ReviewRecord) and r.prediction_id not in pending]
        found = self.lookup(device, wanted) if wanted else {}
        for i, rec in enumerate(records):
            try:
                if not device_ok:
                    raise Refused("bad_id", f"device id {device!r}")
                rec = self.check_common(rec, device, received)
                if isinstance(rec, PredictionRecord):
                    self.check_prediction(rec)
                    pending[rec.id] = rec
                elif isinstance(rec, ReviewRecord):
                    rec = self.review_of(rec, pending.get(rec.prediction_id) or found.get(rec.prediction_id))
                elif isinstance(rec, MetricsRecord | AlertRecord | EventRecord):
                    pass  # finite values and bounded sizes checked in check_common
                good.append(rec)
            except Refused as err:
                refused.append(Refusal(err.refusal.reason, f"{kind}[{i}] {err.refusal.detail}"))
        return good, refused
