"""The body of each dashboard page, from data already computed."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fleet.analytics.gate import AuditEntry
from fleet.analytics.pillars import Snapshot, TrendPoint
from fleet.analytics.shadow import ShadowReport
from fleet.analytics.windows import FLEET, WINDOWS
from fleet.dashboard.alertviews import ago
from fleet.dashboard.charts import line_chart
from fleet.dashboard.layout import button_form, e, hidden, num, pct, table


def _status(s: str | None) -> str:
    cls = "ok" if s == "online" else "bad"
    return f'<span class="{cls}">{e(s or "unknown")}</span>'


def _capability(c: dict[str, Any] | None) -> str:
    """A device's latest capability record in one cell: bundle, fastest configuration, verdicts, when."""
    if not c:
        return '<span class="muted">–</span>'
    fig = (f'{e(c["best_config"])}: P95 {num(c["p95_ms"], "{:.2f}")} ms, {num(c["throughput_ips"], "{:.1f}")} img/s'
           if c.get("best_config") else "no configuration measured")
    verdicts = " ".join(f'<span class="{"ok" if s == "pass" else "bad" if s == "fail" else "muted"}">{e(t)} {e(s)}'
                        f'</span>' for t, s in sorted(c["verdicts"].items()))
    hw = c.get("hardware")
    title = e(json.dumps(hw, sort_keys=True) if isinstance(hw, dict) else (hw or ""))
    return (f'<span class="capability" title="{title}">{e(c.get("bundle") or "?")} · {fig}'
            f'{" · " + verdicts if verdicts else ""} · <span class="muted">{e(c.get("measured_at") or "")}</span>'
            f'</span>')


def devices_body(devices: list[dict[str, Any]]) -> str:
    online = sum(1 for d in devices if d.get("status") == "online")
    rows = [[f'<a href="/dashboard/pillars?device={quote(d["id"])}">{e(d["id"])}</a>', _status(d.get("status")),
             e(d.get("active") or "–"), e(d.get("candidate") or "–"), e(", ".join(d.get("groups") or [])),
             e((d.get("activation") or {}).get("state", "–")), str(d["predictions_24h"]), pct(d["error_rate_24h"]),
             num(d["p95_ms_24h"]), num(d["queue_depth"], "{:g}"),
             " ".join(f'<span class="bad">{e(a)}</span>' for a in d["alerts"]) or '<span class="ok">none</span>',
             ago(d.get("last_seen")), e(d.get("last_error") or ""), _capability(d.get("capability"))]
            for d in devices]
    return (f"<p id=summary>{len(devices)} devices, {online} online.</p><div class=scroll>"
            + table(["device", "status", "release", "candidate", "groups", "activation", "predictions 24 h",
                     "error rate 24 h", "P95 ms 24 h", "queue", "alerts", "last seen", "last error", "capability"], rows,
                    "devices") + "</div>")


def refused_body(rows: list[dict[str, Any]]) -> str:
    """Records refused at the edge of ingest (never stored), per device and reason: what an admin must see when a
    device sends NaN latencies, future timestamps or verdicts on unknown predictions."""
    cells = [[e(r["device"]), e(r["reason"]), str(r["count"]), ago(r.get("last_at")), e(r.get("last_error") or "")]
             for r in rows]
    return ("<h2>Refused records</h2><div class=scroll>"
            + table(["device", "reason", "count", "last", "last refusal"], cells, "refused") + "</div>")


def _gates(g: Any) -> str:
    if not g:
        return '<span class="muted">not judged yet</span>'
    parts = []
    for name, v in (g.get("gates") or {}).items():
        passed = v.get("passed") if isinstance(v, dict) else v
        cls = "ok" if passed else ("muted" if passed is None else "bad")
        detail = {k: x for k, x in v.items() if k != "passed"} if isinstance(v, dict) else {}
        parts.append(f'<span class="{cls}" title="{e(json.dumps(detail))}">{e(name)}'
                     f'{"" if passed is None else (" ✓" if passed else " ✗")}</span>')
    return " · ".join(parts) or e(json.dumps(g))


def rollouts_body(rollouts: list[dict[str, Any]], releases: list[dict[str, Any]], csrf: str, admin: bool,
                  can_halt: bool) -> str:
    rows = []
    for ro in rollouts:
        controls = []
        if admin and ro["state"] == "running" and can_halt:
            controls.append(button_form(f"/dashboard/rollouts/{ro['id']}/halt", "Halt", {}, csrf, f"halt-{ro['id']}"))
        if admin and ro["state"] != "rolled_back":
            controls.append(button_form(f"/dashboard/rollouts/{ro['id']}/rollback", "Roll back", {}, csrf,
                                        f"rollback-{ro['id']}"))
        cls = {"running": "", "completed": "ok", "halted": "bad", "rolled_back": "muted"}.get(ro["state"], "")
        gates = "<br>".join(f"wave {i}: {_gates(g)}" for i, g in enumerate(ro.get("gates") or []))
        targets = ", ".join(f"{t['device']} ({t['state']})" for t in ro.get("targets") or [])
        rows.append([e(ro["id"]), e(ro["release"]), e(ro["group"]), f'<span class="{cls}">{e(ro["state"])}</span>',
                     f'{ro["wave"] + 1}/{ro["waves"]}', e(targets), gates or '<span class="muted">–</span>',
                     e(ro.get("reason") or ""), " ".join(controls)])
    start = ""
    if admin:
        opts = "".join(f'<option value="{e(r["ref"])}">{e(r["ref"])} ({e(r["spec"].get("mode"))})</option>'
                       for r in releases)
        start = ('<h2>Start a rollout</h2><form method="post" action="/dashboard/rollouts/start">'
                 f'{hidden({"csrf": csrf})}<label>release <select id="start-release" name="release">{opts}</select>'
                 '</label> <label>group <input id="start-group" name="group" required></label> '
                 '<label>waves <input id="start-waves" name="waves" value="1,10%,50%,100%"></label> '
                 '<label><input type="checkbox" name="shadow_first" value="1"> shadow first</label> '
                 '<button id="start" type="submit">Start…</button></form>')
    note = "" if can_halt else '<p class="muted">Halt is not offered: this fleet service has no halt command.</p>'
    return (table(["rollout", "release", "group", "state", "wave", "devices", "gates", "reason", "controls"], rows,
                  "rollouts") + note + start)


def _select(name: str, options: list[str], current: str, blank: str | None = None) -> str:
    opts = (f'<option value="">{e(blank)}</option>' if blank is not None else "") + "".join(
        f'<option value="{e(o)}"{" selected" if o == current else ""}>{e(o)}</option>' for o in options)
    return f'<select id="sel-{name}" name="{name}">{opts}</select>'


def pillars_body(s: Snapshot, points: list[TrendPoint], devices: list[str], releases: list[str], device: str,
                 release: str, window: str) -> str:
    form = ('<form method="get" action="/dashboard/pillars">'
            f'device {_select("device", [FLEET] + devices, device)} release {_select("release", releases, release, "all")}'
            f' window {_select("window", list(WINDOWS), window)} <button type="submit">Show</button></form>')
    h, d, o, i = s.health, s.distribution, s.overrides, s.impact
    lat = table(["stage", "avg ms", "P95 ms", "P99 ms", "n"],
                [[e(k), num(v.avg), num(v.p95), num(v.p99), str(v.count)] for k, v in h.latency_ms.items()], "latency")
    health = (f'<div class="card" id="health"><h2>Inference health</h2><p>{h.predictions} predictions, '
              f'{num(h.throughput_per_min, "{:.2f}")} per minute, error rate <b>{pct(h.error_rate, 2)}</b> '
              f'({h.errors} errors), queue depth {num(h.queue_depth, "{:g}")}</p>{lat}</div>')
    dist = table(["class", "share", "mean confidence"],
                 [[e(k), pct(v), num(d.mean_confidence.get(k), "{:.3f}")] for k, v in d.share.items()], "distribution")
    hist = " ".join(f"{k / 10:.1f}: {n}" for k, n in enumerate(d.histogram))
    distribution = (f'<div class="card" id="predictions"><h2>Prediction distribution</h2>{dist}<p>confidence '
                    f'histogram (bins of 0.1) — {e(hist)}</p><p>low-confidence share '
                    f'<b>{pct(d.low_confidence_share)}</b></p></div>')
    per_class = table(["class", "reviewed cases", "overrides", "rate"],
                      [[e(k), str(v.reviews), str(v.overrides), pct(v.rate)] for k, v in o.per_class.items()],
                      "override-class")
    per_band = table(["confidence", "reviewed cases", "overrides", "rate"],
                     [[e(k), str(v.reviews), str(v.overrides), pct(v.rate)] for k, v in o.per_band.items()],
                     "override-band")
    overrides = (f'<div class="card" id="overrides"><h2>Human override rate</h2><p>overall <b>{pct(o.overall.rate)}'
                 f'</b> ({o.overall.overrides} of {o.overall.reviews} reviewed cases); false positives corrected '
                 f'{o.false_positive_corrected}, missed defects caught {o.missed_defect_caught}, bad images '
                 f'{o.bad_image}; unresolved disputes {o.unresolved}</p>{per_class}{per_band}</div>')
    impact = (f'<div class="card" id="impact"><h2>Business impact</h2><p>actions sent <b>{i.actions_sent}</b></p>'
              f"<p>defects the model caught that inspectors missed <b>{i.model_caught_inspector_missed}</b>; "
              f"missed defects (the model passed them) <b>{i.missed_defects}</b></p></div>")
    days = [p.day for p in points]
    charts = "".join([
        line_chart("predictions per day", days, [float(p.predictions) for p in points], "{:.0f}", "chart-predictions"),
        line_chart("error rate", days, [p.error_rate if p.predictions else None for p in points], "{:.3f}",
                   "chart-errors"),
        line_chart("P95 total latency (ms)", days, [p.latency_p95_ms for p in points], "{:.1f}", "chart-latency"),
        line_chart("override rate", days, [p.override_rate if p.reviews else None for p in points], "{:.3f}",
                   "chart-overrides"),
        line_chart("low-confidence share", days, [p.low_confidence_share if p.predictions else None for p in points],
                   "{:.3f}", "chart-lowconf"),
        line_chart("actions sent per day", days, [float(p.actions_sent) for p in points], "{:.0f}", "chart-actions"),
    ])
    return (f"{form}<p class=muted>scope {e(device if device != FLEET else 'whole fleet')}"
            f"{' · release ' + e(release) if release else ''} · window {e(window)} ending "
            f"{e(s.window.end.isoformat(timespec='seconds'))}</p>"
            f'<div class="pillars">{health}{distribution}{overrides}{impact}</div>'
            f'<h2>30-day trends</h2><div class="charts">{charts}</div>')


def shadow_body(r: ShadowReport | None, releases: list[str], release: str, group: str, days: int,
                adjudicators: str, audit: list[AuditEntry], csrf: str, admin: bool, error: str) -> str:
    form = ('<form method="get" action="/dashboard/shadow">'
            f'release {_select("release", releases, release, "choose")} '
            f'group <input id="shadow-group" name="group" value="{e(group)}"> '
            f'days <input name="days" type="number" min="1" value="{days}" size="4"> '
            '<button id="show-report" type="submit">Show report</button></form>'
            f'<p class=muted id=adjudicators>adjudicators (fleet config): {e(adjudicators or "none")}</p>')
    out = form + (f"<p id=error class=bad>{e(error)}</p>" if error else "")
    audit_rows = [[e(a.at), e(a.actor), e(a.release), e(a.group), e(a.outcome), e(a.reason),
                   e(", ".join(a.failed_checks))] for a in reversed(audit)]
    audit_html = "<h2>Promotion audit log</h2>" + table(["time", "actor", "release", "group", "outcome", "reason",
                                                         "failed checks"], audit_rows, "audit")
    if r is None:
        return out + audit_html
    verdict = f'<p><span id="verdict" class="go {"yes" if r.go else "no"}">{"GO" if r.go else "NO-GO"}</span></p>'
    checks = table(["criterion", "result", "detail"],
                   [[e(c.name), f'<span class="{"ok" if c.passed else "bad"}">{"pass" if c.passed else "fail"}</span>',
                     e(c.detail)] for c in r.checks], "checks")
    summary = table(["figure", "value"], [
        ["cases / reviewed / disputed / adjudicated", f"{r.cases} / {r.reviewed} / {r.disputed} / {r.adjudicated}"],
        ["unresolved disputes", str(r.unresolved)], ["agreement", pct(r.agreement_rate)],
        ["override rate", f"{pct(r.override_rate.rate)} ({r.override_rate.overrides} of {r.override_rate.reviews})"],
        ["defects", str(r.defects)], ["model recall", num(r.model_recall, "{:.3f}")],
        ["inspector recall", num(r.inspector_recall, "{:.3f}")],
        ["model-only catches", str(r.model_only_catches)], ["missed defects", str(r.missed_defects)],
        ["model false positives", str(r.model_false_positives)], ["false-positive rate", num(r.fp_rate, "{:.3f}")],
        ["days covered", f"{r.coverage.days} ({r.coverage.weekdays} weekdays, {r.coverage.weekend_days} weekend)"],
        ["devices", e(", ".join(r.devices))]], "summary")
    cols = sorted({m for row in r.agreement.values() for m in row})
    matrix = table(["inspector \\ model"] + cols,
                   [[e(i)] + [str(row.get(m, 0)) for m in cols] for i, row in r.agreement.items()], "agreement")
    per_class = table(["class", "model P", "model R", "model F1", "inspector P", "inspector R", "inspector F1"],
                      [[e(c), *(num(getattr(s[w], k), "{:.3f}") for w in ("model", "inspector")
                                for k in ("precision", "recall", "f1"))] for c, s in r.per_class.items()], "per-class")
    q = f"release={quote(release)}&group={quote(group)}&days={days}"
    links = (f'<p><a id="json" href="/dashboard/shadow/report?{q}&format=json">JSON</a> · '
             f'<a id="markdown" href="/dashboard/shadow/report?{q}&format=md">Markdown</a></p>')
    signed = (f"<p id=signoff>Signed off by {e(r.sign_off.by)} at {e(r.sign_off.at)}</p>" if r.sign_off
              else "<p id=signoff class=muted>No sign-off recorded.</p>")
    controls = ""
    if admin:
        keep = {"release": release, "group": group, "days": days, "csrf": csrf}
        controls = (
            f'<h2>Decide</h2><form method="post" action="/dashboard/shadow/signoff">{hidden(keep)}'
            '<label>note <input name="note" size="40"></label> <button id="sign-off" type="submit">Sign off…</button>'
            f'</form><form method="post" action="/dashboard/shadow/promote">{hidden(keep)}'
            '<label>override reason (admins only, only when the criteria are not met) '
            '<input id="override-reason" name="reason" size="50"></label> '
            '<button id="promote" type="submit">Promote to production…</button></form>')
    return (out + verdict + "<h2>Exit criteria</h2>" + checks + signed + links + controls + "<h2>Summary</h2>"
            + summary + "<h2>Agreement (rows: inspector, columns: model)</h2>" + matrix
            + "<h2>Per class against the adjudicated outcome</h2>" + per_class + audit_html)
