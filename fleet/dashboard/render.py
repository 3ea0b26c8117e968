"""Rendering the dashboard's pages: Jinja2 templates (fleet/dashboard/templates) with autoescape on for every
template, so a device id, a class label, a release name or an alert message that carries markup is shown as text,
never run. Python never builds HTML: views and charts hand plain data to the templates. The filters here are the
only formatting the pages use (percentages, numbers, relative times)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from fleet.analytics.windows import FLEET, parse_ts
from runtime.errors import ShadowlineError

NAV = [("/dashboard/", "Devices"), ("/dashboard/rollouts", "Rollouts"), ("/dashboard/pillars", "Pillars"),
       ("/dashboard/alerts", "Alerts"), ("/dashboard/shadow", "Shadow report")]
DASH = "–"  # what "no data" looks like on every page (never 0: docs/field-truth.md)


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x * 100:.{digits}f}%"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    return DASH if x is None else fmt.format(x)


@dataclass(frozen=True)
class When:
    """A time as people read it on a page: `text` relative ('5 min ago'), `exact` in UTC to the second (shown on
    hover), `iso` for the <time> element. A value that is not a time keeps its text and has no `iso`."""

    text: str
    exact: str = ""
    iso: str = ""


def when(ts: str | datetime | None, now: datetime | None = None) -> When | None:
    """'5 min ago', 'in 2 h', 'just now' for `ts`; None for no time. Devices send the times: one that does not
    parse is shown as sent rather than failing the page."""
    if ts is None or ts == "":
        return None
    try:
        t = parse_ts(ts)
    except (ShadowlineError, TypeError, AttributeError):
        return When(text=str(ts))
    now = now or datetime.now(timezone.utc)
    secs = (now - t).total_seconds()
    future, secs = secs < 0, abs(secs)
    text = "in under a minute" if future else "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if secs >= size:
            n = int(secs // size)
            text = f"in {n} {unit}" if future else f"{n} {unit} ago"
            break
    return When(text=text, exact=t.strftime("%Y-%m-%d %H:%M:%S UTC"), iso=t.isoformat())


def _env() -> Environment:
    env = Environment(loader=PackageLoader("fleet.dashboard", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, num=num, when=when)
    env.globals.update(NAV=NAV, DASH=DASH, FLEET=FLEET)
    return env


ENV = _env()


def render(template: str, **context: Any) -> str:
    """The page `template` rendered with `context` (every value escaped unless the template says otherwise, and
    none does)."""
    return ENV.get_template(template).render(**context)
