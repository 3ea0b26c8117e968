"""Shadow evaluation of a release on a device group over a window: the model's findings against the inspectors'
and the adjudicated outcome, and the exit criteria that give the go/no-go. Report as JSON or Markdown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.analytics.cases import NO_DEFECT, Case, build_cases
from fleet.analytics.windows import Window, parse_ts
from fleet.protocol import PredictionRecord, ReviewRecord, now_iso


class ExitCriteria(BaseModel):
    """What a shadow period must show before promotion; defaults are the field guide's."""

    model_config = ConfigDict(extra="forbid")
    min_days: int = Field(14, ge=0, description="distinct UTC days with reviewed cases")
    min_weekend_days: int = Field(0, ge=0, description="of which Saturdays/Sundays (lines often run differently)")
    recall_at_least_inspector: bool = Field(True, description="model recall >= inspector recall")
    max_fp_rate: float = Field(0.05, ge=0, le=1, description="model false positives / items truly without defect "
                               "must stay below this (the agreed threshold)")
    require_sign_off: bool = Field(True, description="a named person recorded a sign-off")


class SignOff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, description="who signed off")
    at: str = Field(default_factory=now_iso)
    note: str = ""

    @field_validator("by")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a sign-off needs a name")
        return v.strip()


class ClassScore(BaseModel):
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


class Check(BaseModel):
    name: str
    passed: bool
    detail: str


class Coverage(BaseModel):
    days: int
    weekdays: int
    weekend_days: int
    first: str | None
    last: str | None
    dates: list[str]


class ShadowReport(BaseModel):
    release: str
    devices: list[str]
    window: Window
    generated_at: str = Field(default_factory=now_iso)
    cases: int = Field(description="non-error predictions of the release in the window (bad images left out)")
    reviewed: int = Field(description="cases with an inspector finding")
    evaluated: int = Field(description="reviewed cases with an adjudicated outcome: the base of every rate")
    unresolved: int = Field(description="reviewed cases where model and inspector disagree and nobody adjudicated")
    agreement: dict[str, dict[str, int]] = Field(description="inspector finding -> model finding -> count")
    agreement_rate: float
    model_only_catches: int
    inspector_only_catches: int
    model_false_positives: int
    inspector_false_positives: int
    defects: int = Field(description="evaluated cases whose outcome is a defect")
    model_recall: float
    inspector_recall: float
    fp_rate: float = Field(description="model false positives / evaluated cases without a defect")
    per_class: dict[str, dict[str, ClassScore]] = Field(description="class -> 'model'|'inspector' -> scores")
    coverage: Coverage
    criteria: ExitCriteria
    sign_off: SignOff | None
    checks: list[Check]
    go: bool

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def to_markdown(self) -> str:
        return render_markdown(self)


def _score(tp: int, fp: int, fn: int) -> ClassScore:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return ClassScore(tp=tp, fp=fp, fn=fn, precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0)


def coverage(cases: Iterable[Case]) -> Coverage:
    dates = sorted({parse_ts(c.created_at).date() for c in cases})
    weekend = sum(1 for d in dates if d.weekday() >= 5)
    return Coverage(days=len(dates), weekdays=len(dates) - weekend, weekend_days=weekend,
                    first=dates[0].isoformat() if dates else None, last=dates[-1].isoformat() if dates else None,
                    dates=[d.isoformat() for d in dates])


def evaluate_cases(cases: list[Case], release: str, window: Window, criteria: ExitCriteria | None = None,
                   sign_off: SignOff | None = None) -> ShadowReport:
    """The shadow report for already built cases (all of one release, inside `window`)."""
    criteria = criteria or ExitCriteria()
    reviewed = [c for c in cases if c.inspector is not None]
    ev = [c for c in reviewed if c.truth is not None]
    matrix: dict[str, Counter[str]] = {}
    for c in reviewed:
        matrix.setdefault(c.inspector, Counter())[c.model] += 1  # type: ignore[arg-type]
    agree = sum(1 for c in reviewed if c.inspector == c.model)
    defects = [c for c in ev if c.truth != NO_DEFECT]
    clean = [c for c in ev if c.truth == NO_DEFECT]
    model_fp = sum(1 for c in clean if c.model != NO_DEFECT)
    classes = sorted({x for c in ev for x in (c.truth, c.model, c.inspector) if x not in (None, NO_DEFECT)})
    per_class = {}
    for cls in classes:
        per_class[cls] = {
            who: _score(tp=sum(1 for c in ev if getattr(c, who) == cls and c.truth == cls),
                        fp=sum(1 for c in ev if getattr(c, who) == cls and c.truth != cls),
                        fn=sum(1 for c in ev if c.truth == cls and getattr(c, who) != cls))
            for who in ("model", "inspector")}
    # Recall here is "the defect was flagged at all": a flag with the wrong class still stops the part.
    model_recall = sum(1 for c in defects if c.model != NO_DEFECT) / len(defects) if defects else 0.0
    insp_recall = sum(1 for c in defects if c.inspector != NO_DEFECT) / len(defects) if defects else 0.0
    fp_rate = model_fp / len(clean) if clean else 0.0
    cov = coverage(reviewed)
    checks = [Check(name="days", passed=cov.days >= criteria.min_days,
                    detail=f"{cov.days} days covered ({cov.weekdays} weekdays, {cov.weekend_days} weekend days), "
                           f"need {criteria.min_days}")]
    if criteria.min_weekend_days:
        checks.append(Check(name="weekend_days", passed=cov.weekend_days >= criteria.min_weekend_days,
                            detail=f"{cov.weekend_days} weekend days, need {criteria.min_weekend_days}"))
    if criteria.recall_at_least_inspector:
        checks.append(Check(name="recall", passed=bool(defects) and model_recall >= insp_recall,
                            detail=f"model recall {model_recall:.3f} vs inspector {insp_recall:.3f} over "
                                   f"{len(defects)} defects"))
    checks.append(Check(name="fp_rate", passed=bool(clean) and fp_rate < criteria.max_fp_rate,
                        detail=f"false-positive rate {fp_rate:.3f} ({model_fp}/{len(clean)}), must be below "
                               f"{criteria.max_fp_rate:.3f}"))
    if criteria.require_sign_off:
        checks.append(Check(name="sign_off", passed=sign_off is not None,
                            detail=f"signed off by {sign_off.by} at {sign_off.at}" if sign_off else "no sign-off"))
    return ShadowReport(
        release=release, devices=sorted({c.device for c in cases}), window=window, cases=len(cases),
        reviewed=len(reviewed), evaluated=len(ev), unresolved=len(reviewed) - len(ev),
        agreement={k: dict(sorted(v.items())) for k, v in sorted(matrix.items())},
        agreement_rate=agree / len(reviewed) if reviewed else 0.0,
        model_only_catches=sum(1 for c in defects if c.model != NO_DEFECT and c.inspector == NO_DEFECT),
        inspector_only_catches=sum(1 for c in defects if c.model == NO_DEFECT and c.inspector != NO_DEFECT),
        model_false_positives=model_fp,
        inspector_false_positives=sum(1 for c in clean if c.inspector != NO_DEFECT),
        defects=len(defects), model_recall=model_recall, inspector_recall=insp_recall, fp_rate=fp_rate,
        per_class=per_class, coverage=cov, criteria=criteria, sign_off=sign_off, checks=checks,
        go=all(c.passed for c in checks))


def shadow_report(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord], release: str,
                  window: Window, devices: Iterable[str] | None = None, adjudicators: Iterable[str] = (),
                  criteria: ExitCriteria | None = None, sign_off: SignOff | None = None) -> ShadowReport:
    """Evaluate `release` (name or name@revision) on `devices` (None: all) over `window`."""
    name, _, rev = release.partition("@")
    group = set(devices) if devices is not None else None
    preds = [p for p in predictions
             if p.release == name and (not rev or str(p.revision) == rev) and window.contains(p.created_at)
             and (group is None or p.device in group)]
    ids = {p.id for p in preds}
    revs = [r for r in reviews if r.prediction_id in ids]
    return evaluate_cases(build_cases(preds, revs, adjudicators), release, window, criteria, sign_off)


def render_markdown(r: ShadowReport) -> str:
    verdict = "GO" if r.go else "NO-GO"
    lines = [f"# Shadow report: {r.release} — {verdict}", "",
             f"Window {r.window.start.isoformat()} to {r.window.end.isoformat()}; devices: "
             f"{', '.join(r.devices) or 'none'}; generated {r.generated_at}.", "",
             "## Exit criteria", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in r.checks]
    lines += ["", "## Summary", "", "| figure | value |", "|---|---|",
              f"| cases | {r.cases} |", f"| reviewed | {r.reviewed} |", f"| evaluated (adjudicated) | {r.evaluated} |",
              f"| unresolved disagreements | {r.unresolved} |", f"| agreement rate | {r.agreement_rate:.1%} |",
              f"| defects | {r.defects} |", f"| model recall | {r.model_recall:.3f} |",
              f"| inspector recall | {r.inspector_recall:.3f} |", f"| model-only catches | {r.model_only_catches} |",
              f"| inspector-only catches | {r.inspector_only_catches} |",
              f"| model false positives | {r.model_false_positives} |", f"| false-positive rate | {r.fp_rate:.3f} |",
              f"| days covered | {r.coverage.days} ({r.coverage.weekdays} weekdays, "
              f"{r.coverage.weekend_days} weekend) |", ""]
    cols = sorted({m for row in r.agreement.values() for m in row})
    lines += ["## Agreement (rows: inspector, columns: model)", "",
              "| inspector \\ model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {i} | " + " | ".join(str(row.get(m, 0)) for m in cols) + " |" for i, row in r.agreement.items()]
    lines += ["", "## Per class against the adjudicated outcome", "",
              "| class | model P | model R | model F1 | inspector P | inspector R | inspector F1 |",
              "|---|---|---|---|---|---|---|"]
    for cls, s in r.per_class.items():
        m, i = s["model"], s["inspector"]
        lines.append(f"| {cls} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {i.precision:.3f} | "
                     f"{i.recall:.3f} | {i.f1:.3f} |")
    if r.sign_off:
        lines += ["", f"Signed off by {r.sign_off.by} at {r.sign_off.at}. {r.sign_off.note}".rstrip()]
    return "\n".join(lines) + "\n"
