"""A frame's prediction records (fleet.protocol.PredictionRecord), built from what the pipeline decided."""

from __future__ import annotations

from edge.pipeline import Decision, FrameResult, Pipeline
from edge.sources import Frame
from fleet.protocol import PredictionRecord


def _from_decision(device: str, frame: Frame, d: Decision, role: str, decode_ms: float,
                   disagrees: str | None = None) -> PredictionRecord:
    top_label, top_score = d.top
    return PredictionRecord(
        device=device, source=frame.source, release=d.release, revision=d.revision,
        mode="shadow" if role == "candidate" else d.mode, role=role, models=d.models,
        thresholds=d.thresholds, stages=[s.to_protocol() for s in d.stages], decision=d.decision,
        flagged=[(c, round(s, 6)) for c, s in d.flagged], top_label=top_label,
        top_score=None if top_score is None else round(top_score, 6),
        latency_ms={"decode": round(decode_ms, 3), **d.latency_ms}, disagrees_with=disagrees, degraded=d.degraded)


def build_records(device: str, p: Pipeline, frame: Frame, result: FrameResult | None, error: str | None,
                  decode_ms: float) -> tuple[PredictionRecord, PredictionRecord | None]:
    """(active record, candidate record or None). No result: an `error` record with the reason."""
    spec = p.active.spec
    if result is None:
        return PredictionRecord(device=device, source=frame.source, release=spec.name, revision=spec.revision,
                                mode=spec.mode, models=p.active.models, thresholds=p.active.thresholds,
                                decision="error", error=error, latency_ms={"decode": round(decode_ms, 3)}), None
    active = _from_decision(device, frame, result.active, "active", decode_ms)
    cand = None
    if result.candidate is not None:
        cand = _from_decision(device, frame, result.candidate, "candidate", decode_ms,
                              active.id if result.disagree else None)
    if result.candidate_error is not None and p.candidate is not None:
        c = p.candidate.spec
        cand = PredictionRecord(device=device, source=frame.source, release=c.name, revision=c.revision,
                                mode="shadow", role="candidate", models=p.candidate.models,
                                thresholds=p.candidate.thresholds, decision="error", error=result.candidate_error)
    return active, cand
