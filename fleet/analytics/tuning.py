"""Per-class threshold tuning: a table of precision, recall, F1, false positives and misses per threshold,
a strategy per class (max-F1, minimum recall, cost-weighted), checked on a held-out split; a precision-recall plot
and, on request, a new release revision with the same bundles and the tuned thresholds."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol import ReleaseSpec
from runtime.errors import ConfigError
from runtime.fsio import atomic_write_bytes

# 0.05 .. 0.95; rounded so that 0.15 is 0.15 and not 0.15000000000000002 (keys of the table and of the YAML).
DEFAULT_GRID = [round(0.05 * k, 2) for k in range(1, 20)]


class Sample(BaseModel):
    """One image: the model's per-class scores and the classes truly present."""

    model_config = ConfigDict(extra="forbid")
    id: str
    scores: dict[str, float]
    truth: list[str] = Field(default_factory=list, description="classes present; empty means nothing to find")
    source: str = ""


class Row(BaseModel):
    threshold: float
    tp: int
    fp: int
    misses: int
    tn: int
    precision: float = Field(description="tp / (tp + fp); 0 when nothing is flagged")
    recall: float
    f1: float


class MaxF1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["max_f1"] = "max_f1"


class MinRecall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["min_recall"] = "min_recall"
    recall: float = Field(0.98, gt=0, le=1, description="the highest threshold that keeps recall at least this")


class CostWeighted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["cost"] = "cost"
    miss_cost: float = Field(10.0, ge=0, description="cost of one missed defect")
    false_alarm_cost: float = Field(1.0, ge=0, description="cost of one false alarm")


Strategy = Annotated[MaxF1 | MinRecall | CostWeighted, Field(discriminator="kind")]


class TuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: list[float] = Field(default_factory=lambda: list(DEFAULT_GRID), description="thresholds to try")
    default: Strategy = Field(default_factory=MaxF1, description="strategy for classes without their own")
    per_class: dict[str, Strategy] = Field(default_factory=dict, description="class -> strategy")
    holdout: float = Field(0.3, ge=0, lt=1, description="fraction of samples held out to check the choice")
    classes: list[str] | None = Field(None, description="classes to tune; None: every class seen in the scores")


class Choice(BaseModel):
    threshold: float
    strategy: str
    met: bool = Field(description="False when no threshold meets a minimum-recall target (lowest one proposed)")
    train: Row
    holdout: Row | None = None
    holdout_met: bool | None = Field(None, description="minimum recall still met on the held-out split")


class TuningResult(BaseModel):
    samples: int
    train: int
    holdout: int
    holdout_ids: list[str] = Field(default_factory=list, description="the samples kept out of tuning")
    grid: list[float]
    table: dict[str, list[Row]] = Field(description="class -> one row per threshold, on the training split")
    proposed: dict[str, Choice]

    @property
    def thresholds(self) -> dict[str, float]:
        return {c: ch.threshold for c, ch in self.proposed.items()}


def table_rows(samples: Sequence[Sample], cls: str, grid: Sequence[float]) -> list[Row]:
    """One row per threshold for `cls`: a sample is flagged when its score reaches the threshold."""
    rows = []
    for t in grid:
        tp = fp = fn = tn = 0
        for s in samples:
            flagged = s.scores.get(cls, 0.0) >= t
            present = cls in s.truth
            tp += flagged and present
            fp += flagged and not present
            fn += present and not flagged
            tn += not flagged and not present
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        rows.append(Row(threshold=t, tp=tp, fp=fp, misses=fn, tn=tn, precision=p, recall=r,
                        f1=2 * p * r / (p + r) if p + r else 0.0))
    return rows


def choose(rows: list[Row], strategy: MaxF1 | MinRecall | CostWeighted) -> tuple[Row, bool]:
    """The row a strategy picks; ties go to the higher threshold (fewer alarms for the same figure)."""
    if isinstance(strategy, MaxF1):
        return max(rows, key=lambda r: (r.f1, r.threshold)), True
    if isinstance(strategy, MinRecall):
        ok = [r for r in rows if r.recall >= strategy.recall]
        if ok:
            return max(ok, key=lambda r: r.threshold), True
        return min(rows, key=lambda r: r.threshold), False
    return min(rows, key=lambda r: (strategy.miss_cost * r.misses + strategy.false_alarm_cost * r.fp,
                                    -r.threshold)), True


def split(samples: Sequence[Sample], holdout: float) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split by a hash of the sample id: the same sample always lands on the same side."""
    if holdout <= 0:
        return list(samples), []
    ranked = sorted(samples, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())
    k = int(round(len(ranked) * holdout))
    return ranked[k:], ranked[:k]


def tune(samples: Sequence[Sample], config: TuningConfig | None = None) -> TuningResult:
    """Tune each class's threshold on the training split and check the choice on the held-out split."""
    config = config or TuningConfig()
    if not samples:
        raise ConfigError("threshold tuning needs at least one labelled sample")
    grid = sorted(config.grid)
    if not grid or grid[0] < 0 or grid[-1] > 1:
        raise ConfigError(f"thresholds must be within 0..1, got {config.grid}")
    # By default only classes that occur in the truth: a class nobody ever labels cannot be tuned.
    classes = config.classes or sorted({c for s in samples for c in s.truth})
    train, held = split(samples, config.holdout)
    table: dict[str, list[Row]] = {}
    proposed: dict[str, Choice] = {}
    for cls in classes:
        if not any(cls in s.truth for s in train):
            raise ConfigError(f"class {cls!r} has no positive sample in the training split: cannot tune it")
        rows = table_rows(train, cls, grid)
        strategy = config.per_class.get(cls, config.default)
        row, met = choose(rows, strategy)
        choice = Choice(threshold=row.threshold, strategy=strategy.kind, met=met, train=row)
        if held:
            h = table_rows(held, cls, [row.threshold])[0]
            choice.holdout = h
            if isinstance(strategy, MinRecall):
                choice.holdout_met = h.recall >= strategy.recall
        table[cls], proposed[cls] = rows, choice
    return TuningResult(samples=len(samples), train=len(train), holdout=len(held),
                        holdout_ids=sorted(s.id for s in held), grid=grid, table=table,
                        proposed=proposed)


def render_table(result: TuningResult, cls: str) -> str:
    """The class's table in Markdown, the shape of the field guide's."""
    lines = ["| threshold | precision | recall | F1 | false positives | misses |", "|---|---|---|---|---|---|"]
    chosen = result.proposed[cls].threshold
    for r in result.table[cls]:
        mark = " **<-**" if r.threshold == chosen else ""
        lines.append(f"| {r.threshold:.2f}{mark} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {r.fp} | "
                     f"{r.misses} |")
    return "\n".join(lines) + "\n"


def plot_pr(result: TuningResult, out: Path) -> Path:
    """A precision-recall curve per class with the proposed threshold marked, as PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on devices or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    try:
        for cls, rows in result.table.items():
            line, = ax.plot([r.recall for r in rows], [r.precision for r in rows], marker=".", label=cls)
            ch = result.proposed[cls].train
            ax.scatter([ch.recall], [ch.precision], s=90, facecolors="none", edgecolors=line.get_color())
            ax.annotate(f"{ch.threshold:.2f}", (ch.recall, ch.precision), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        ax.set_title("precision-recall per class (circle: proposed threshold)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


def retune_release(spec: ReleaseSpec, thresholds: dict[str, float], note: str = "") -> ReleaseSpec:
    """The next revision of `spec`: the same bundles, the verify stage's (or single stage's) class thresholds
    replaced by `thresholds`. A screen stage keeps one threshold for its candidate classes: the lowest tuned one,
    because the screen must not drop what the verifier would flag."""
    stages = [s.model_copy(deep=True) for s in spec.stages]
    target = next((s for s in stages if s.role == "verify"), stages[-1])
    if target.role == "verify":
        merged = dict(target.thresholds or {})
        merged.update({k: round(v, 4) for k, v in thresholds.items()})
        merged.setdefault("default", 0.5)
        target.thresholds = merged
    else:
        tuned = [v for k, v in thresholds.items() if not target.candidate_classes or k in target.candidate_classes]
        if not tuned:
            raise ConfigError(f"no tuned threshold for the screen's candidate classes {target.candidate_classes}")
        target.threshold = round(min(tuned), 4)
    return spec.model_copy(update={"revision": spec.revision + 1, "stages": stages,
                                   "note": note or f"thresholds tuned, same model (from {spec.ref})"})
