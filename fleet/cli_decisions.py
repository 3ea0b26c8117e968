"""`shadowline fleet shadow | alerts | pillars`: the decisions from the command line, over the fleet's API
(fleet/api_decisions.py), so a script gets what the dashboard shows. Registered on the `fleet` group by
fleet/cli.py."""

from __future__ import annotations

from typing import Any

import click

from fleet import cli_output as show
from fleet.cli import Api, _api_options
from fleet.cli_output import emit, json_option


# -- the shadow report, sign-off, promotion ----------------------------------------------------------------------
@click.group("shadow")
def shadow_group() -> None:
    """The shadow report (GO / NO-GO with every exit criterion), sign-off, and promotion through the gate."""


def _release_options(f: Any) -> Any:
    f = click.option("--days", type=click.IntRange(1, 365), default=14, show_default=True,
                     help="Shadow period: the last DAYS days.")(f)
    f = click.option("--group", required=True, help="Device group the release ran on in shadow.")(f)
    return click.argument("release")(f)


@shadow_group.command("report")
@_api_options
@json_option
@_release_options
def shadow_report(url: str, token: str | None, as_json: bool, release: str, group: str, days: int) -> None:
    """The shadow report of RELEASE (name@revision) on a group, as Markdown (or --json): the verdict with each
    exit criterion, cases, disputes, override rate, recall, false-positive rate, agreement and per-class scores.
    Exits 0 whatever the verdict; `shadow promote` is what the verdict gates."""
    api = Api(url, token)
    params = {"release": release, "group": group, "days": days}
    if as_json:
        emit(api.call("GET", "/api/shadow/report", params=params), True, str)
    else:
        click.echo(api.call("GET", "/api/shadow/report", params={**params, "format": "md"}, text=True).rstrip())


@shadow_group.command("signoff")
@_api_options
@json_option
@click.argument("release")
@click.option("--group", required=True, help="Device group the shadow period ran on.")
@click.option("--note", default="", help="Kept with the sign-off.")
def shadow_signoff(url: str, token: str | None, as_json: bool, release: str, group: str, note: str) -> None:
    """Record your sign-off of RELEASE's shadow period on a group (the token's holder signs)."""
    done = Api(url, token).call("POST", "/api/shadow/signoff", json={"release": release, "group": group,
                                                                     "note": note})
    emit(done, as_json, lambda s: f"signed off {release} on {group} by {s['by']} at {s['at']}")


@shadow_group.command("promote")
@_api_options
@json_option
@_release_options
@click.option("--override-reason", default="", help="Admin only: promote although the exit criteria are not met, "
              "for this reason (kept in the audit log).")
def shadow_promote(url: str, token: str | None, as_json: bool, release: str, group: str, days: int,
                   override_reason: str) -> None:
    """Promote RELEASE from shadow to production on a group through the go/no-go gate: the next revision is
    created in production mode and rolled out to the group. Refused (exit 11, naming the failed criteria) unless
    the report says GO or --override-reason is given; every attempt is in the audit log."""
    done = Api(url, token).call("POST", "/api/shadow/promote", json={
        "release": release, "group": group, "days": days, "override_reason": override_reason})
    emit(done, as_json, show.promotion)


@shadow_group.command("audit")
@_api_options
@json_option
@click.option("--release", default="", help="Only this release (name or name@revision).")
def shadow_audit(url: str, token: str | None, as_json: bool, release: str) -> None:
    """The promotion audit log: every attempt, refused or allowed, with who, why and the failed criteria."""
    emit(Api(url, token).call("GET", "/api/shadow/audit", params={"release": release}), as_json, show.audit)


# -- alerts --------------------------------------------------------------------------------------------------------
@click.group("alerts")
def alerts_group() -> None:
    """Alerts: list, show, acknowledge, resolve; silence notifications for a while."""


@alerts_group.command("list")
@_api_options
@json_option
@click.option("--history", is_flag=True, help="Every incident, newest first (default: the open ones).")
@click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True, help="With --history.")
def alerts_list(url: str, token: str | None, as_json: bool, history: bool, limit: int) -> None:
    """Open alerts, most urgent first (severity, then firing before acknowledged before silenced)."""
    emit(Api(url, token).call("GET", "/api/alerts", params={"history": history, "limit": limit}), as_json,
         show.alerts)


@alerts_group.command("show")
@_api_options
@json_option
@click.argument("alert_id")
def alerts_show(url: str, token: str | None, as_json: bool, alert_id: str) -> None:
    """One alert: rule, value, threshold, status, who acknowledged, silenced or resolved it, its runbook."""
    emit(Api(url, token).call("GET", f"/api/alerts/{alert_id}"), as_json, show.alert)


@alerts_group.command("ack")
@_api_options
@json_option
@click.argument("alert_id")
@click.option("--note", default="", help="Kept with the acknowledgement.")
def alerts_ack(url: str, token: str | None, as_json: bool, alert_id: str, note: str) -> None:
    """Acknowledge ALERT_ID (you took it: repeated notifications stop)."""
    emit(Api(url, token).call("POST", f"/api/alerts/{alert_id}/ack", json={"note": note}), as_json, show.alert)


@alerts_group.command("resolve")
@_api_options
@json_option
@click.argument("alert_id")
@click.option("--note", default="", help="What was done.")
def alerts_resolve(url: str, token: str | None, as_json: bool, alert_id: str, note: str) -> None:
    """Close ALERT_ID by hand; the next evaluation raises it again if its condition still holds."""
    emit(Api(url, token).call("POST", f"/api/alerts/{alert_id}/resolve", json={"note": note}), as_json, show.alert)


@alerts_group.command("silence")
@_api_options
@json_option
@click.option("--device", default="*", show_default=True, help="Device id or pattern ('*' includes the fleet).")
@click.option("--rule", default="*", show_default=True, help="Rule or pattern, e.g. override_rate:*.")
@click.option("--for", "duration", required=True, help="How long: 30m, 2h, 1d (at most 31 days).")
@click.option("--reason", required=True, help="Shown to everyone the alerts would have reached.")
def alerts_silence(url: str, token: str | None, as_json: bool, device: str, rule: str, duration: str,
                   reason: str) -> None:
    """Silence notifications of matching alerts for a while; they still show, marked silenced."""
    done = Api(url, token).call("POST", "/api/silences", json={"device": device, "rule": rule, "duration": duration,
                                                               "reason": reason})
    emit(done, as_json, show.silence)


@alerts_group.command("silences")
@_api_options
@json_option
@click.option("--all", "include_ended", is_flag=True, help="Ended silences too.")
def alerts_silences(url: str, token: str | None, as_json: bool, include_ended: bool) -> None:
    """Silences in force (or all), newest first."""
    emit(Api(url, token).call("GET", "/api/silences", params={"all": include_ended}), as_json, show.silences)


@alerts_group.command("unsilence")
@_api_options
@json_option
@click.argument("silence_id")
def alerts_unsilence(url: str, token: str | None, as_json: bool, silence_id: str) -> None:
    """End SILENCE_ID now."""
    emit(Api(url, token).call("POST", f"/api/silences/{silence_id}/expire"), as_json, show.silence)


# -- the pillars ---------------------------------------------------------------------------------------------------
@click.command("pillars")
@_api_options
@json_option
@click.option("--device", default="*", show_default=True, help="Device id, or '*' for the whole fleet.")
@click.option("--release", default="", help="Only this release (name or name@revision).")
@click.option("--window", type=click.Choice(["1h", "24h", "30d"]), default="24h", show_default=True,
              help="Window ending now.")
@click.option("--trend", is_flag=True, help="With --json: one point per day of the last 30 days as well.")
def pillars(url: str, token: str | None, as_json: bool, device: str, release: str, window: str,
            trend: bool) -> None:
    """The four pillars (error rate, P95 latency, queue depth, class share, low-confidence share, override rate,
    unresolved disputes, missed defects, actions sent) as the dashboard shows them."""
    params: dict[str, Any] = {"device": device, "release": release, "window": window, "trend": trend}
    emit(Api(url, token).call("GET", "/api/pillars", params=params), as_json, show.pillars)
