"""Inline SVG line charts for the 30-day trends: no JavaScript, no external assets, readable in any browser."""

from __future__ import annotations

from html import escape

W, H, PAD = 560, 150, 34


def line_chart(title: str, days: list[str], values: list[float | None], fmt: str = "{:.2f}",
               chart_id: str = "") -> str:
    """One series per day; missing days (None) break the line rather than pretending to be zero."""
    known = [v for v in values if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    n = max(1, len(values) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + i * (W - 2 * PAD) / n, H - PAD + (lo - v) * (H - 2 * PAD) / (hi - lo)

    segments, cur = [], []
    for i, v in enumerate(values):
        if v is None:
            if cur:
                segments.append(cur)
            cur = []
        else:
            cur.append(xy(i, v))
    if cur:
        segments.append(cur)
    lines = "".join(
        '<polyline fill="none" stroke="#2563eb" stroke-width="2" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in seg) + '"/>'
        + "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#2563eb"/>' for x, y in seg)
        for seg in segments)
    last = fmt.format(known[-1]) if known else "no data"
    first_day, last_day = (days[0], days[-1]) if days else ("", "")
    return (
        f'<figure class="chart" id="{escape(chart_id)}"><figcaption>{escape(title)}: <b>{escape(last)}</b> '
        f'(latest)</figcaption><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(title)}">'
        f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="#f8fafc" stroke="#cbd5e1"/>'
        f'<text x="2" y="{PAD + 4}" font-size="10">{escape(fmt.format(hi))}</text>'
        f'<text x="2" y="{H - PAD}" font-size="10">{escape(fmt.format(lo))}</text>'
        f'<text x="{PAD}" y="{H - 8}" font-size="10">{escape(first_day)}</text>'
        f'<text x="{W - PAD - 60}" y="{H - 8}" font-size="10">{escape(last_day)}</text>'
        f"{lines}</svg></figure>")
