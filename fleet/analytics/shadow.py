"""Shadow evaluation of a release on a device group over a window: the model's findings against the inspectors'
and the adjudicated outcome, and the exit criteria that give the go/no-go. Report as JSON or Markdown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.analytics import figures
from fleet.analytics.cases import NO_DEFECT, Case, build_cases
from fleet.analytics.figures import ClassScore, Rate
from fleet.analytics.windows import Window, parse_ts
from fleet.protocol import PredictionRecord, ReviewRecord, now_iso


class ExitCriteria(BaseModel):
    """What a shadow period must show before promotion; defaults are the field guide's."""

    model_config = ConfigDict(extra="forbid")
    min_days: int = Field(14, ge=0, description="distinct UTC days with reviewed cases")
    min_weekend_days: int = Field(0, ge=0, description="of which Saturdays/Sundays (lines often run differently)")
    recall_at_least_inspector: bool = Field(True, description="model recall >= inspector recall")
    max_fp_rate: float = Field(0.05, ge=0, le=1, description="model false positives / reviewed cases without a "
                               "defect must stay below this (the agreed threshold)")
    max_unresolved: int = Field(0, ge=0, description="disputed cases nobody adjudicated that may remain (a dispute "
                                "counts with the inspector's verdict either way)")
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
    adjudicators: list[str] = Field(description="whose verdicts decided cases")
    generated_at: str = Field(default_factory=now_iso)
    cases: int = Field(description="non-error predictions of the release in the window, bad images left out")
    bad_images: int = Field(description="cases someone called a bad image (left out of every figure)")
    reviewed: int = Field(description="cases with a verdict: the base of every verdict figure")
    disputed: int = Field(description="reviewed cases where the line verdicts and the model disagree")
    adjudicated: int = Field(description="reviewed cases an adjudicator decided")
    unresolved: int = Field(description="figures.unresolved_disputes: disputed cases nobody adjudicated; they "
                                        "count with the inspector's verdict")
    agreement: dict[str, dict[str, int]] = Field(description="inspector finding -> model finding -> count")
    agreement_rate: float | None = Field(description="line verdicts agreeing with the model; None if none")
    override_rate: Rate = Field(description="figures.override_rate")
    model_only_catches: int = Field(description="figures.model_only_catches")
    missed_defects: int = Field(description="figures.missed_defects")
    model_false_positives: int
    inspector_false_positives: int
    defects: int = Field(description="reviewed cases whose outcome is a defect")
    model_recall: float | None = Field(description="figures.recall(model); None without defects")
    inspector_recall: float | None = Field(description="figures.recall(inspector); None without defects")
    fp_rate: float | None = Field(description="figures.false_positive_rate; None without clean cases")
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


def coverage(cases: Iterable[Case]) -> Coverage:
    dates = sorted({parse_ts(c.created_at).date() for c in cases})
    weekend = sum(1 for d in dates if d.weekday() >= 5)
    return Coverage(days=len(dates), weekdays=len(dates) - weekend, weekend_days=weekend,
                    first=dates[0].isoformat() if dates else None, last=dates[-1].isoformat() if dates else None,
                    dates=[d.isoformat() for d in dates])


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "no data" if x is None else fmt.format(x)


def evaluate_cases(cases: list[Case], release: str, window: Window, criteria: ExitCriteria | None = None,
                   sign_off: SignOff | None = None, adjudicators: Iterable[str] = ()) -> ShadowReport:
    """The shadow report for already built cases (all of one release, inside `window`)."""
    criteria = criteria or ExitCriteria()
    counted = [c for c in cases if not c.bad_image]
    reviewed = figures.judged(counted)
    matrix: dict[str, Counter[str]] = {}
    for c in reviewed:
        if c.inspector is not None and c.model is not None:
            matrix.setdefault(c.inspector, Counter())[c.model] += 1
    with_line = [c for c in reviewed if c.inspector is not None]
    agree = sum(1 for c in with_line if c.inspector == c.model)
    defects = [c for c in reviewed if c.outcome != NO_DEFECT]
    clean = [c for c in reviewed if c.outcome == NO_DEFECT]
    fp = figures.false_positive_rate(reviewed)
    model_recall, insp_recall = figures.recall(reviewed, "model"), figures.recall(reviewed, "inspector")
    unresolved = figures.unresolved_disputes(counted)
    classes = sorted({x for c in reviewed for x in (c.outcome, c.model, c.inspector) if x not in (None, NO_DEFECT)})
    per_class = {cls: {who: figures.class_scores(reviewed, cls, who) for who in ("model", "inspector")}
                 for cls in classes}
    cov = coverage(reviewed)
    checks = [Check(name="days", passed=cov.days >= criteria.min_days,
                    detail=f"{cov.days} days covered ({cov.weekdays} weekdays, {cov.weekend_days} weekend days), "
                           f"need {criteria.min_days}")]
    if criteria.min_weekend_days:
        checks.append(Check(name="weekend_days", passed=cov.weekend_days >= criteria.min_weekend_days,
                            detail=f"{cov.weekend_days} weekend days, need {criteria.min_weekend_days}"))
    if criteria.recall_at_least_inspector:
        ok = model_recall.value is not None and insp_recall.value is not None and model_recall.value >= insp_recall.value
        checks.append(Check(name="recall", passed=ok,
                            detail=f"model recall {_f(model_recall.value)} ({model_recall.count}/{model_recall.of}) vs "
                                   f"inspector {_f(insp_recall.value)} ({insp_recall.count}/{insp_recall.of}) over "
                                   f"{len(defects)} defects"))
    checks.append(Check(name="fp_rate", passed=fp.value is not None and fp.value < criteria.max_fp_rate,
                        detail=f"false-positive rate {_f(fp.value)} ({fp.count}/{fp.of}), must be below "
                               f"{criteria.max_fp_rate:.3f}"))
    checks.append(Check(name="unresolved", passed=unresolved <= criteria.max_unresolved,
                        detail=f"{unresolved} unresolved disputes of {sum(1 for c in reviewed if c.disputed)} "
                               f"disputed cases, at most {criteria.max_unresolved} allowed"))
    if criteria.require_sign_off:
        checks.append(Check(name="sign_off", passed=sign_off is not None,
                            detail=f"signed off by {sign_off.by} at {sign_off.at}" if sign_off else "no sign-off"))
    return ShadowReport(
        release=release, devices=sorted({c.device for c in cases}), window=window,
        adjudicators=sorted(set(adjudicators)), cases=len(counted), bad_images=len(cases) - len(counted),
        reviewed=len(reviewed), disputed=sum(1 for c in reviewed if c.disputed),
        adjudicated=sum(1 for c in reviewed if c.adjudicated), unresolved=unresolved,
        agreement={k: dict(sorted(v.items())) for k, v in sorted(matrix.items())},
        agreement_rate=agree / len(with_line) if with_line else None,
        override_rate=figures.override_rate(reviewed), model_only_catches=figures.model_only_catches(reviewed),
        missed_defects=figures.missed_defects(reviewed), model_false_positives=fp.count,
        inspector_false_positives=sum(1 for c in clean if c.inspector not in (None, NO_DEFECT)),
        defects=len(defects), model_recall=model_recall.value, inspector_recall=insp_recall.value, fp_rate=fp.value,
        per_class=per_class, coverage=cov, criteria=criteria, sign_off=sign_off, checks=checks,
        go=all(c.passed for c in checks))


def shadow_report(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord], release: str,
                  window: Window, devices: Iterable[str] | None = None, adjudicators: Iterable[str] = (),
                  criteria: ExitCriteria | None = None, sign_off: SignOff | None = None) -> ShadowReport:
    """Evaluate `release` (name or name@revision) on `devices` (None: all) over `window`: the active (or shadow)
    predictions made in the window, with every verdict given on them."""
    name, _, rev = release.partition("@")
    group = set(devices) if devices is not None else None
    preds = [p for p in predictions
             if p.release == name and (not rev or str(p.revision) == rev) and window.contains(p.created_at)
             and (group is None or p.device in group)]
    ids = {p.id for p in preds}
    revs = [r for r in reviews if r.prediction_id in ids]
    judges = list(adjudicators)
    return evaluate_cases(build_cases(preds, revs, judges), release, window, criteria, sign_off, judges)


def render_markdown(r: ShadowReport) -> str:
    verdict = "GO" if r.go else "NO-GO"
    o = r.override_rate
    lines = [f"# Shadow report: {r.release} — {verdict}", "",
             f"Window {r.window.start.isoformat()} to {r.window.end.isoformat()}; devices: "
             f"{', '.join(r.devices) or 'none'}; adjudicators: {', '.join(r.adjudicators) or 'none'}; "
             f"generated {r.generated_at}.", "",
             "## Exit criteria", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in r.checks]
    lines += ["", "## Summary", "", "| figure | value |", "|---|---|",
              f"| cases | {r.cases} |", f"| reviewed | {r.reviewed} |", f"| disputed | {r.disputed} |",
              f"| adjudicated | {r.adjudicated} |", f"| unresolved disputes | {r.unresolved} |",
              f"| agreement rate | {_f(r.agreement_rate, '{:.1%}')} |",
              f"| override rate | {_f(o.rate, '{:.1%}')} ({o.overrides} of {o.reviews}) |",
              f"| defects | {r.defects} |", f"| model recall | {_f(r.model_recall)} |",
              f"| inspector recall | {_f(r.inspector_recall)} |", f"| model-only catches | {r.model_only_catches} |",
              f"| missed defects | {r.missed_defects} |",
              f"| model false positives | {r.model_false_positives} |", f"| false-positive rate | {_f(r.fp_rate)} |",
              f"| bad images (left out) | {r.bad_images} |",
              f"| days covered | {r.coverage.days} ({r.coverage.weekdays} weekdays, "
              f"{r.coverage.weekend_days} weekend) |", ""]
    cols = sorted({m for row in r.agreement.values() for m in row})
    lines += ["## Agreement (rows: inspector, columns: model)", "",
              "| inspector \\ model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {i} | " + " | ".join(str(row.get(m, 0)) for m in cols) + " |" for i, row in r.agreement.items()]
    lines += ["", "## Per class against the outcome", "",
              "| class | model P | model R | model F1 | inspector P | inspector R | inspector F1 |",
              "|---|---|---|---|---|---|---|"]
    for cls, s in r.per_class.items():
        m, i = s["model"], s["inspector"]
        lines.append(f"| {cls} | {_f(m.precision)} | {_f(m.recall)} | {_f(m.f1)} | {_f(i.precision)} | "
                     f"{_f(i.recall)} | {_f(i.f1)} |")
    if r.sign_off:
        lines += ["", f"Signed off by {r.sign_off.by} at {r.sign_off.at}. {r.sign_off.note}".rstrip()]
    return "\n".join(lines) + "\n"
