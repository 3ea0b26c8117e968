"""Builders for recorded record streams: real fleet.protocol records with chosen times and values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fleet.protocol import MetricsRecord, PredictionRecord, ReviewRecord

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)  # a Monday


def at(hours: float = 0.0, days: float = 0.0) -> str:
    return (T0 + timedelta(hours=hours, days=days)).isoformat()


def pred(t: str, label: str = "Normal", score: float = 0.9, decision: str = "pass", device: str = "dev-1",
         release: str = "pcb", revision: int = 1, latency: float = 10.0, mode: str = "shadow",
         flagged: list | None = None, **kw) -> PredictionRecord:
    if flagged is None and decision == "flag":
        flagged = [(label, score)]
    return PredictionRecord(device=device, created_at=t, source="folder:x.png", release=release, revision=revision,
                            mode=mode, decision=decision, top_label=None if decision == "error" else label,
                            top_score=None if decision == "error" else score, flagged=flagged or [],
                            latency_ms={"verify": latency * 0.8, "total": latency},
                            error="boom" if decision == "error" else None, **kw)


def review(p: PredictionRecord, verdict: str, t: str | None = None, inspector: str = "ann",
           defect_class: str | None = None) -> ReviewRecord:
    override = verdict in ("false_positive", "missed_defect")
    return ReviewRecord(prediction_id=p.id, device=p.device, created_at=t or p.created_at, inspector=inspector,
                        verdict=verdict, defect_class=defect_class, override=override, model_decision=p.decision,
                        release=p.release, revision=p.revision, top_label=p.top_label, top_score=p.top_score)


def queue(t: str, depth: float, device: str = "dev-1") -> MetricsRecord:
    return MetricsRecord(device=device, created_at=t, release="pcb", revision=1, window_s=60,
                         values={"queue_depth": depth})
