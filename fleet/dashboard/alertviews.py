"""The alerts pages: open alerts most urgent first with severity, status, relative times and the controls
(acknowledge, silence, resolve), the silences in force, and the history with each incident once."""

from __future__ import annotations

from datetime import datetime, timezone

from fleet.alerting import AlertView, Silence
from fleet.analytics.windows import FLEET, parse_ts
from fleet.dashboard.layout import button_form, e, hidden, num, table

SEVERITY_CSS = {"critical": "bad", "warning": "warn", "info": "muted"}


def ago(ts: str | None, now: datetime | None = None) -> str:
    """'5 min ago' (or 'in 2 h' for a future time), with the exact UTC time, to the second, on hover."""
    if not ts:
        return '<span class="muted">–</span>'
    t = parse_ts(ts)
    now = now or datetime.now(timezone.utc)
    secs = (now - t).total_seconds()
    future, secs = secs < 0, abs(secs)
    if secs < 60:
        text = "just now" if not future else "in under a minute"
    else:
        for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
            if secs >= size:
                n = int(secs // size)
                text = f"in {n} {unit}" if future else f"{n} {unit} ago"
                break
    exact = t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{e(t.isoformat())}" title="{e(exact)}">{e(text)}</time>'


def _scope(device: str) -> str:
    return "whole fleet" if device == FLEET else device


def _status(v: AlertView) -> str:
    extra = ""
    if v.ack:
        extra = f" by {e(v.ack.by)}"
    elif v.silence:
        extra = f" until {ago(v.silence.until)} ({e(v.silence.reason)})"
    elif v.resolved_by:
        extra = f" by {e(v.resolved_by.by)}"
    return f'<span class="status {e(v.status)}">{e(v.status)}</span>{extra}'


def _controls(v: AlertView, csrf: str) -> str:
    out = []
    if v.status in ("firing", "silenced") and v.ack is None:
        out.append(button_form(f"/dashboard/alerts/{v.id}/ack", "Acknowledge", {}, csrf, f"ack-{v.id}"))
    if v.status != "resolved":
        out.append(button_form(f"/dashboard/alerts/{v.id}/resolve", "Resolve", {}, csrf, f"resolve-{v.id}"))
        out.append(f'<a class="button" id="silence-{e(v.id)}" href="/dashboard/alerts/{e(v.id)}#silence">Silence…</a>')
    return " ".join(out)


def _rows(views: list[AlertView], csrf: str, admin: bool, now: datetime) -> list[list[str]]:
    return [[f'<span class="sev {SEVERITY_CSS[v.severity.value]}">{e(v.severity.value)}</span>',
             f'<a href="/dashboard/alerts/{e(v.id)}">{e(v.rule)}</a>', e(_scope(v.device)), _status(v),
             ago(v.raised_at, now) + (f" → cleared {ago(v.cleared_at, now)}" if v.cleared_at else ""),
             f"{num(v.value, '{:.4g}')} / {num(v.threshold, '{:.4g}')}", e(v.message),
             f'<a href="{e(v.runbook)}">runbook</a>'] + ([_controls(v, csrf)] if admin else [])
            for v in views]


HEADS = ["severity", "rule", "scope", "status", "since", "value / limit", "what", "runbook"]


def alerts_body(current: list[AlertView], history: list[AlertView], silences: list[Silence], csrf: str,
                admin: bool, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    heads = HEADS + (["actions"] if admin else [])
    run = button_form("/dashboard/alerts/evaluate", "Evaluate rules now", {}, csrf, "evaluate") if admin else ""
    sil_rows = [[e(s.device), e(s.rule), e(s.reason), e(s.by), ago(s.until, now)]
                + ([button_form(f"/dashboard/silences/{s.id}/expire", "End now", {}, csrf, f"expire-{s.id}")]
                   if admin else []) for s in silences]
    firing = sum(v.status == "firing" for v in current)
    return (f'<p id="summary">{len(current)} open, {firing} firing and not taken.</p>'
            f'<div class="scroll">{table(heads, _rows(current, csrf, admin, now), "active-alerts")}</div>{run}'
            "<h2>Silences in force</h2>"
            + table(["device", "rule", "reason", "by", "ends"] + (["actions"] if admin else []), sil_rows, "silences")
            + "<h2>History (each incident once, newest first)</h2>"
            + f'<div class="scroll">{table(HEADS, [r[:8] for r in _rows(history, csrf, False, now)], "alert-history")}</div>')


def alert_body(v: AlertView, csrf: str, admin: bool, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    facts = table(["", ""], [
        ["severity", f'<span class="sev {SEVERITY_CSS[v.severity.value]}">{e(v.severity.value)}</span>'],
        ["status", _status(v)], ["scope", e(_scope(v.device))], ["rule", e(v.rule)],
        ["raised", ago(v.raised_at, now)], ["cleared", ago(v.cleared_at, now) if v.cleared_at else "–"],
        ["value / limit", f"{num(v.value, '{:.4g}')} / {num(v.threshold, '{:.4g}')}"], ["what", e(v.message)],
        ["acknowledged", f"{e(v.ack.by)} {ago(v.ack.at, now)}: {e(v.ack.note)}" if v.ack else "–"],
        ["runbook", f'<a id="runbook" href="{e(v.runbook)}">{e(v.runbook)}</a>']], "alert")
    if not admin or v.status == "resolved":
        return facts
    silence = ('<h2 id="silence">Silence</h2><form method="post" action="/dashboard/alerts/silence">'
               f'{hidden({"csrf": csrf, "back": v.id})}'
               f'<label>device <input name="device" value="{e(v.device)}"></label> '
               f'<label>rule <input name="rule" value="{e(v.rule)}"></label> '
               '<label>for (hours) <input name="hours" type="number" min="0.1" max="744" step="0.1" value="4"></label> '
               '<label>reason <input name="reason" required size="40"></label> '
               '<button id="silence-submit" type="submit">Silence…</button></form>'
               '<p class="muted">Patterns: * matches anything (device * also covers fleet-wide alerts).</p>')
    return facts + f"<p>{_controls(v, csrf)}</p>" + silence
