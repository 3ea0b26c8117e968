"""What the fleet's admin commands print: a readable table or summary by default, the API's JSON with `--json`
(for scripts). Every admin command goes through `emit`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print `data` as JSON (sorted keys, indented) or as `render(data)`."""
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else render(data).rstrip("\n"))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of text.")(f)


def cell(v: Any) -> str:
    if v is None or v == "" or v == []:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def pct(v: float | None, digits: int = 1) -> str:
    return "no data" if v is None else f"{v * 100:.{digits}f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> str:
    """Columns padded to their widest cell, a header line, and `empty` when there is no row."""
    if not rows:
        return f"{'  '.join(headers)}\n{empty}"
    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in items)


# -- one renderer per kind of answer -------------------------------------------------------------------------------
def bundles(rows: list[dict[str, Any]]) -> str:
    return table(["id", "task", "labels", "signer", "size", "coreml", "pushed"],
                 [[b.get("id"), b.get("task"), len(b.get("labels") or []), b.get("signer"), b.get("size"),
                   "yes" if b.get("coreml") else "no", b.get("pushed_at")] for b in rows])


def bundle(b: dict[str, Any]) -> str:
    return f"registered {b.get('id')} ({b.get('task')}, {len(b.get('labels') or [])} labels, signed by " \
           f"{b.get('signer')}, sha256 {str(b.get('sha256'))[:12]}..., {b.get('size')} bytes)"


def releases(rows: list[dict[str, Any]]) -> str:
    def stages(spec: dict[str, Any]) -> str:
        return " -> ".join(f"{s.get('role')}:{s.get('bundle')}" for s in spec.get("stages") or [])

    return table(["ref", "mode", "stages", "parent", "created"],
                 [[r.get("ref"), (r.get("spec") or {}).get("mode"), stages(r.get("spec") or {}), r.get("parent"),
                   r.get("created_at")] for r in rows])


def release(r: dict[str, Any]) -> str:
    stages = " -> ".join(f"{s.get('role')}:{s.get('bundle')}" for s in r.get("stages") or [])
    return f"created {r.get('name')}@{r.get('revision')} ({r.get('mode')}): {stages}"


def rollouts(rows: list[dict[str, Any]]) -> str:
    return table(["id", "release", "group", "state", "wave", "reason", "updated"],
                 [[r.get("id"), r.get("release"), r.get("group"), r.get("state"), (r.get("wave") or 0) + 1,
                   r.get("reason"), r.get("updated_at")] for r in rows])


def rollout(r: dict[str, Any]) -> str:
    head = pairs([("rollout", r.get("id")), ("release", r.get("release")), ("group", r.get("group")),
                  ("state", r.get("state")), ("wave", f"{(r.get('wave') or 0) + 1} of {r.get('waves')}"),
                  ("sizes", r.get("sizes")), ("reason", r.get("reason")),
                  ("devices", " ".join(f"{k}={v}" for k, v in sorted((r.get("counts") or {}).items())))])
    gates = []
    for i, g in enumerate(r.get("gates") or []):
        for name, v in ((g or {}).get("gates") or {}).items():
            gates.append([i + 1, name, {True: "pass", False: "FAIL", None: "not judged"}[v.get("passed")],
                          v.get("value"), v.get("limit")])
    return head + ("\n\n" + table(["wave", "gate", "result", "value", "limit"], gates) if gates else "")


def devices(rows: list[dict[str, Any]]) -> str:
    return table(["device", "status", "active", "candidate", "groups", "activation", "last seen"],
                 [[d.get("id"), d.get("status"), d.get("active"), d.get("candidate"), d.get("groups"),
                   (d.get("activation") or {}).get("state"), d.get("last_seen")] for d in rows],
                 "(no devices)")


def device(d: dict[str, Any]) -> str:
    rep, h = d.get("reported") or {}, d.get("health_24h") or {}
    out = pairs([("device", d.get("id")), ("status", d.get("status")), ("groups", d.get("groups")),
                 ("tags", ", ".join(f"{k}={v}" for k, v in (d.get("tags") or {}).items())),
                 ("first / last seen", f"{cell(d.get('first_seen'))} / {cell(d.get('last_seen'))}"),
                 ("active", d.get("active")), ("candidate", d.get("candidate")), ("cached", rep.get("cached")),
                 ("desired", (d.get("desired") or {}).get("release")),
                 ("activation", (d.get("activation") or {}).get("state")), ("last error", d.get("last_error")),
                 ("backends", rep.get("backends")),
                 ("hardware", ", ".join(f"{k}={v}" for k, v in (rep.get("hardware") or {}).items())),
                 ("predictions 24 h", h.get("predictions")), ("error rate 24 h", pct(h.get("error_rate"), 2)),
                 ("P95 total ms 24 h", h.get("latency_p95_ms")), ("queue depth", h.get("queue_depth")),
                 ("override rate 24 h", f"{pct(h.get('override_rate'))} of {h.get('reviewed_cases')} reviewed cases"),
                 ("capability", (d.get("capability") or {}).get("created_at"))])
    alerts_ = table(["severity", "status", "rule", "value", "raised"],
                    [[a.get("severity"), a.get("status"), a.get("rule"), a.get("value"), a.get("raised_at")]
                     for a in d.get("alerts") or []])
    errors = table(["at", "release", "source", "error"],
                   [[e.get("at"), e.get("release"), e.get("source"), e.get("error")] for e in d.get("recent_errors")
                    or []])
    return f"{out}\n\nopen alerts\n{alerts_}\n\nrecent errors\n{errors}"


def alerts(rows: list[dict[str, Any]]) -> str:
    return table(["id", "severity", "status", "device", "rule", "value", "threshold", "raised"],
                 [[a.get("id"), a.get("severity"), a.get("status"), "fleet" if a.get("device") == "*" else
                   a.get("device"), a.get("rule"), a.get("value"), a.get("threshold"), a.get("raised_at")]
                  for a in rows], "(no alerts)")


def alert(a: dict[str, Any]) -> str:
    extra = []
    if a.get("ack"):
        extra.append(("acknowledged", f"by {a['ack']['by']} at {a['ack']['at']}"))
    if a.get("silence"):
        extra.append(("silenced", f"by {a['silence']['by']} until {a['silence']['until']}"))
    if a.get("resolved_by"):
        extra.append(("resolved", f"by {a['resolved_by']['by']} at {a['resolved_by']['at']}"))
    return pairs([("alert", a.get("id")), ("rule", a.get("rule")), ("device", a.get("device")),
                  ("severity", a.get("severity")), ("status", a.get("status")), ("value", a.get("value")),
                  ("threshold", a.get("threshold")), ("message", a.get("message")), ("raised", a.get("raised_at")),
                  ("cleared", a.get("cleared_at")), ("runbook", a.get("runbook")), *extra])


def silences(rows: list[dict[str, Any]]) -> str:
    return table(["id", "device", "rule", "by", "until", "reason"],
                 [[s.get("id"), s.get("device"), s.get("rule"), s.get("by"), s.get("until"), s.get("reason")]
                  for s in rows], "(no silences)")


def silence(s: dict[str, Any]) -> str:
    return f"silence {s.get('id')}: device {s.get('device')}, rule {s.get('rule')}, until {s.get('until')} " \
           f"(by {s.get('by')}: {s.get('reason')})"


def audit(rows: list[dict[str, Any]]) -> str:
    return table(["at", "actor", "release", "group", "outcome", "failed checks", "reason"],
                 [[e.get("at"), e.get("actor"), e.get("release"), e.get("group"), e.get("outcome"),
                   e.get("failed_checks"), e.get("reason")] for e in rows], "(no promotion attempts)")


def promotion(p: dict[str, Any]) -> str:
    d = p.get("decision") or {}
    how = (f"under an audited admin override (failed: {', '.join(d.get('failed_checks') or [])})"
           if d.get("overridden") else "the exit criteria are met")
    return f"promoted: {p.get('release')} rolling out to {p.get('group')} (rollout {p.get('rollout')}), {how}; " \
           f"audit entry {d.get('audit_id')}"


def pillars(p: dict[str, Any]) -> str:
    s = p["snapshot"]
    h, d, o, i = s["health"], s["distribution"], s["overrides"], s["impact"]
    scope = s["scope"]
    total = (h.get("latency_ms") or {}).get("total") or {}
    lines = [f"scope {'fleet' if scope['device'] == '*' else scope['device']}"
             f"{' release ' + scope['release'] if scope.get('release') else ''}, "
             f"window {s['window']['start']} to {s['window']['end']}", "",
             pairs([("predictions", h["predictions"]), ("error rate", pct(h["error_rate"], 2)),
                    ("P95 total latency ms", total.get("p95")), ("queue depth", h.get("queue_depth")),
                    ("class share", ", ".join(f"{k} {pct(v)}" for k, v in d["share"].items())),
                    ("low-confidence share", pct(d["low_confidence_share"])),
                    ("override rate", f"{pct(o['overall']['rate'])} ({o['overall']['overrides']} of "
                                      f"{o['overall']['reviews']} reviewed cases)"),
                    ("unresolved disputes", o["unresolved"]), ("missed defects", i["missed_defects"]),
                    ("model-only catches", i["model_caught_inspector_missed"]),
                    ("actions sent", i["actions_sent"])])]
    return "\n".join(lines)
