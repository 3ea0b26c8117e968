"""HTML building blocks of the dashboard pages: the frame with navigation, tables, forms with CSRF tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

NAV = [("/dashboard/", "Devices"), ("/dashboard/rollouts", "Rollouts"), ("/dashboard/pillars", "Pillars"),
       ("/dashboard/alerts", "Alerts"), ("/dashboard/shadow", "Shadow report")]

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#0f172a;background:#fff}
header{background:#0f172a;color:#fff;padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cbd5e1;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .who{margin-left:auto;font-size:.85rem;color:#94a3b8}
main{padding:1rem 1.4rem;max-width:1250px}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;font-size:.9rem}
th,td{border:1px solid #e2e8f0;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f1f5f9}
.ok{color:#15803d;font-weight:600}.bad{color:#b91c1c;font-weight:600}.muted{color:#64748b}
.go{font-size:1.6rem;padding:.3rem .8rem;border-radius:.3rem;display:inline-block}
.go.yes{background:#dcfce7;color:#166534}.go.no{background:#fee2e2;color:#991b1b}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{margin:0}
form.inline{display:inline}button{cursor:pointer}
.pillars{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:1rem}
.card{border:1px solid #e2e8f0;border-radius:.4rem;padding:.4rem .9rem}
.msg{padding:.5rem .8rem;background:#fef9c3;border:1px solid #fde047;margin-bottom:1rem}
.warn{color:#b45309;font-weight:600}.scroll{overflow-x:auto;max-width:100%}
.sev{text-transform:uppercase;font-size:.75rem;letter-spacing:.03em}
.status.firing{color:#b91c1c;font-weight:600}.status.acknowledged{color:#b45309}.status.silenced{color:#64748b}
.status.resolved{color:#15803d}
a.button{display:inline-block;padding:.05rem .4rem;border:1px solid #94a3b8;border-radius:.2rem;color:inherit;
text-decoration:none;background:#f1f5f9;font-size:.85rem}
header{flex-wrap:wrap}
@media (max-width:600px){main{padding:.6rem}header{gap:.6rem;font-size:.9rem}.pillars{grid-template-columns:1fr}
table{font-size:.8rem}th,td{padding:.2rem .35rem}}
"""


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def page(title: str, body: str, who: str | None = None, active: str = "", message: str = "") -> str:
    nav = "".join(f'<a href="{href}" class="{"on" if href == active else ""}">{e(label)}</a>' for href, label in NAV)
    user = f'<span class="who">{e(who)} · <a href="/dashboard/logout">log out</a></span>' if who else ""
    msg = f'<div class="msg" id="message">{e(message)}</div>' if message else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)} · Shadowline fleet</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
            f"<body><header><b>Shadowline fleet</b>{nav}{user}</header><main><h1>{e(title)}</h1>{msg}{body}"
            f"</main></body></html>")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    """`rows` cells are HTML already (escape text with e())."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    return f'<table id="{e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def hidden(fields: dict[str, Any]) -> str:
    return "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items())


def button_form(action: str, label: str, fields: dict[str, Any], csrf: str, button_id: str = "") -> str:
    return (f'<form class="inline" method="post" action="{e(action)}">{hidden({**fields, "csrf": csrf})}'
            f'<button id="{e(button_id)}" type="submit">{e(label)}</button></form>')


def confirm_page(title: str, question: str, action: str, fields: dict[str, Any], csrf: str, who: str,
                 back: str) -> str:
    """Every control goes through this page: the action runs only from its second, explicit submit."""
    body = (f"<p id=question>{e(question)}</p>"
            f'<form method="post" action="{e(action)}">{hidden({**fields, "csrf": csrf, "confirm": "yes"})}'
            f'<button id="confirm" type="submit">Yes, {e(title.lower())}</button> '
            f'<a id="cancel" href="{e(back)}">Cancel</a></form>')
    return page(f"Confirm: {title}", body, who)
