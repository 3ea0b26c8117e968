"""One pass of the alert rules over a fleet's records: every device and the whole fleet, each against the
baseline of the release it mostly ran in the window. Returns the alerts that changed state; the caller stores
and publishes them (the fleet service from its loop, the dashboard on request)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from fleet.analytics.alerts import AlertRules, AlertTracker
from fleet.analytics.pillars import Baseline, PillarOptions, baseline, snapshot
from fleet.analytics.windows import FLEET, Scope, Window, parse_ts, select
from fleet.protocol import AlertRecord, MetricsRecord, PredictionRecord, ReviewRecord


def evaluate_fleet(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
                   metrics: Iterable[MetricsRecord], history: Iterable[AlertRecord], now: datetime | str,
                   window: str = "1h", rules: AlertRules | None = None, opts: PillarOptions | None = None,
                   baseline_days: float = 7.0) -> list[AlertRecord]:
    """Alerts raised or cleared at `now`; `history` (stored alerts) tells which are already raised."""
    preds, revs, mets = list(predictions), list(reviews), list(metrics)
    win = Window.last(window, end=now)
    tracker = AlertTracker.from_history(history, rules)
    recent = select(preds, win)
    cache: dict[str, Baseline | None] = {}

    def base_for(scope_preds: list[PredictionRecord]) -> Baseline | None:
        if not scope_preds:
            return None
        ref = Counter(f"{p.release}@{p.revision}" for p in scope_preds).most_common(1)[0][0]
        if ref not in cache:
            mine = select(preds, None, Scope(release=ref))
            start = parse_ts(mine[0].created_at) if mine else None
            # the baseline is the release's first days, but never the window being judged: that would hide
            # every change
            end = min(start + timedelta(days=baseline_days), win.start) if start else None
            cache[ref] = (baseline(preds, revs, mets, ref, window=Window(start=start, end=end), opts=opts)
                          if start is not None and end is not None and end > start else None)
        return cache[ref]

    changes: list[AlertRecord] = []
    devices = sorted({p.device for p in recent} | {m.device for m in select(mets, win)})
    for device in devices + [FLEET]:
        scope = Scope(device=device)
        now_snap = snapshot(preds, revs, mets, win, scope, opts)
        b = base_for(select(recent, None, scope))
        changes += tracker.update(now_snap, b.snapshot if b else None, at=win.end.isoformat())
    return changes
