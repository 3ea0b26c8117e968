"""The geometry of the dashboard's charts (inline SVG drawn by templates/charts.html: no JavaScript, no assets from
anywhere, so the pages work on a plant network). Every value axis starts at 0: a rate of 0 sits on the floor of its
chart instead of in the middle of an auto-scaled −0.5…0.5, and a rise reads as large as it is. Where an alert rule
judges the figure, its limit is drawn as a line, and the axis always reaches past it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# The viewBox; the SVG scales to the width it gets (about 350 px on a phone, up to 600 px on a desktop), so its
# 12-unit text reads at 10-16 px.
W, H = 440, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 10, 16, 30


@dataclass(frozen=True)
class Tick:
    pos: float  # pixels along the axis
    label: str


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str  # what the point is, on hover


@dataclass(frozen=True)
class Line:
    """A horizontal (or, for bar charts, vertical) marker such as an alert limit."""

    pos: float
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    label: str  # shown above the bar
    tip: str
    warn: bool = False


@dataclass
class Chart:
    id: str
    title: str
    latest: str  # the figure in the caption (the latest point, or the total)
    note: str = ""
    width: int = W
    height: int = H
    left: int = LEFT
    top: int = TOP
    right: int = W - RIGHT
    bottom: int = H - BOTTOM
    y_ticks: list[Tick] = field(default_factory=list)
    x_labels: list[Tick] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)  # polyline point lists, one per unbroken run of data
    points: list[Point] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    hline: Line | None = None  # an alert limit across a line chart
    vline: Line | None = None  # a boundary across a bar chart
    empty: bool = False

    @property
    def kind(self) -> str:
        return "bars" if self.bars else "line"


def nice_top(hi: float, whole: bool = False) -> tuple[float, float]:
    """(top, step) of an axis from 0 that holds `hi` in at most 4 steps of 1, 2, 2.5 or 5 × 10^k; `whole` keeps
    the steps whole numbers (counts)."""
    if not hi > 0:
        return (4.0, 1.0) if whole else (1.0, 0.25)
    raw = hi / 4
    mag = 10 ** math.floor(math.log10(raw))
    if whole:
        mag = max(1, mag)
    steps = (1, 2, 5, 10) if whole and mag < 10 else (1, 2, 2.5, 5, 10)
    step = float(next(m * mag for m in steps if m * mag >= raw - 1e-12))
    return step * math.ceil(hi / step - 1e-9), step


def _decimals(step: float) -> int:
    """Digits after the point that tell ticks `step` apart (0.25 needs 2, 5 needs 0)."""
    for d in range(7):
        if abs(round(step, d) - step) < step * 1e-6:
            return d
    return 6


def formatter(unit: str, step: float) -> Callable[[float], str]:
    """Tick labels of an axis from 0 in steps of `step`: `rate` as a percentage, `ms` with its unit, `count`
    whole. The ticks are multiples of the step from 0, so no label reads "-0"."""
    if unit == "rate":
        d = _decimals(step * 100)
        return lambda v: f"{v * 100:.{d}f}%"
    d = _decimals(step)
    suffix = " ms" if unit == "ms" else ""
    return lambda v: f"{v:.{d}f}{suffix}"


def _value_label(unit: str) -> Callable[[float], str]:
    if unit == "rate":
        return lambda v: f"{v * 100:.2f}%"
    if unit == "ms":
        return lambda v: f"{v:.1f} ms"
    return lambda v: f"{v:.0f}"


def line_chart(chart_id: str, title: str, days: Sequence[str], values: Sequence[float | None], unit: str,
               limit: float | None = None, limit_label: str = "", note: str = "") -> Chart:
    """One value per day; a day without data (None) breaks the line rather than pretending to be zero. `unit`
    is `rate` (0..1, shown in %), `ms` or `count`. `limit` draws the alert rule's limit."""
    known = [v for v in values if v is not None]
    top, step = nice_top(max(known + ([limit * 1.15] if limit is not None else []), default=0.0), unit == "count")
    fmt, value = formatter(unit, step), _value_label(unit)
    c = Chart(id=chart_id, title=title, latest=value(known[-1]) if known else "no data", note=note,
              empty=not known)
    span_x, span_y = c.right - c.left, c.bottom - c.top
    n = max(1, len(values) - 1)

    def y(v: float) -> float:
        return round(c.bottom - v / top * span_y, 1)

    ticks = round(top / step)
    c.y_ticks = [Tick(y(i * step), fmt(i * step)) for i in range(ticks + 1)]
    run: list[Point] = []
    for i, v in enumerate(values):
        if v is None:
            if run:
                c.segments.append(" ".join(f"{p.x},{p.y}" for p in run))
            run = []
            continue
        p = Point(round(c.left + i * span_x / n, 1), y(v), f"{days[i] if i < len(days) else ''}: {value(v)}")
        run.append(p)
        c.points.append(p)
    if run:
        c.segments.append(" ".join(f"{p.x},{p.y}" for p in run))
    if days:
        c.x_labels = [Tick(c.left, days[0]), Tick(c.right, days[-1])]
    if limit is not None:
        c.hline = Line(y(limit), limit_label or f"alert above {value(limit)}")
    return c


def histogram(chart_id: str, title: str, counts: Sequence[int], edges: Sequence[float], mark: float | None = None,
              mark_label: str = "", note: str = "") -> Chart:
    """Bars of `counts` over bins between `edges` (len(counts) + 1 of them); bins below `mark` are drawn as
    warnings and `mark` as a vertical line."""
    top, step = nice_top(float(max(counts, default=0)), whole=True)
    fmt = formatter("count", step)
    c = Chart(id=chart_id, title=title, latest=f"{sum(counts)} predictions", note=note, empty=not any(counts))
    span_x, span_y = c.right - c.left, c.bottom - c.top
    lo, hi = edges[0], edges[-1]

    def x(v: float) -> float:
        return round(c.left + (v - lo) / (hi - lo) * span_x, 1)

    c.y_ticks = [Tick(round(c.bottom - i * step / top * span_y, 1), fmt(i * step)) for i in range(round(top / step) + 1)]
    for k, n in enumerate(counts):
        x0, x1 = x(edges[k]), x(edges[k + 1])
        h = round(n / top * span_y, 1)
        c.bars.append(Bar(x0 + 1, round(c.bottom - h, 1), round(x1 - x0 - 2, 1), h, str(n),
                          f"{edges[k]:.1f}–{edges[k + 1]:.1f}: {n}", warn=mark is not None and edges[k + 1] <= mark))
    c.x_labels = [Tick(x(e), f"{e:.1f}") for e in edges]
    if mark is not None:
        c.vline = Line(x(mark), mark_label)
    return c
