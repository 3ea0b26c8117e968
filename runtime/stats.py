"""The one percentile of the project: every P50/P95/P99 (daemon, fleet pillars and rollout gates, hwbench,
benchmarks) is computed here, so the same samples give the same figure on every surface."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile: the value at rank ceil(q/100 * n) of the sorted values, so always one of the
    measured values (a P99 of 20 samples is their maximum, not an interpolation beyond what was seen).

    Raises ValueError on no values: what "no data" means (None, a gap in a chart) is the caller's to say, never 0."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    return s[max(1, math.ceil(q / 100 * len(s))) - 1]
