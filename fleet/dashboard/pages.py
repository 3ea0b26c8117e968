"""The dashboard's routes: pages, confirmed controls (start, halt, roll back, sign off, promote), report
downloads and Prometheus /metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import ValidationError

from fleet import decisions
from fleet.analytics.shadow import SignOff
from fleet.analytics.windows import FLEET, WINDOWS
from fleet.dashboard import auth, data, views
from fleet.dashboard.metrics import METRICS_CONTENT_TYPE, render_metrics
from fleet.dashboard.render import render
from runtime.errors import ShadowlineError


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?next={quote(nxt)}", status_code=303)


def _who(request: Request) -> auth.Session | None:
    try:
        return auth.session(request)
    except auth.LoginRequired:
        return None


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


def _page(template: str, title: str, session: auth.Session | None, active: str = "", message: str = "",
          status: int = 200, **context: Any) -> HTMLResponse:
    """A dashboard page: `template` inside the frame (navigation, who is logged in, the message of the last
    action), autoescaped."""
    return _html(render(template, title=title, who=session.name if session else None, active=active,
                        message=message, **context), status)


def _error(s: auth.Session | None, title: str, why: str, status: int, active: str = "") -> HTMLResponse:
    return _page("error.html", title, s, active, status=status, error=why)


def _refused(s: auth.Session | None, why: str, status: int = 403) -> HTMLResponse:
    return _error(s, "Not allowed", why, status)


def _confirm(verb: str, question: str, action: str, fields: dict[str, Any], s: auth.Session, back: str,
             warnings: list[str] | None = None) -> HTMLResponse:
    """Every control goes through this page: the action runs only from its second, explicit submit."""
    return _page("confirm.html", f"Confirm: {verb}", s, verb=verb, question=question, action=action, fields=fields,
                 csrf=s.csrf, back=back, warnings=warnings or [])


def build_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    # -- session ---------------------------------------------------------------------------------------------
    @r.get("/dashboard/login")
    def login_page(next: str = "/dashboard/", failed: int = 0) -> HTMLResponse:
        msg = "That token is not valid for the dashboard (it needs the viewer or admin role)." if failed else ""
        return _page("login.html", "Log in", None, message=msg, next=next)

    @r.post("/dashboard/login")
    def login(request: Request, token: str = Form(""), next: str = Form("/dashboard/")) -> Response:
        got = auth.login(request, token)
        target = next if next.startswith("/dashboard") else "/dashboard/"
        if got is None:
            return RedirectResponse(f"/dashboard/login?failed=1&next={quote(target)}", status_code=303)
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(auth.COOKIE, got[0], httponly=True, samesite="strict", max_age=auth.SESSION_S,
                        path="/", secure=request.url.scheme == "https")
        return resp

    @r.get("/dashboard/logout")
    def logout(request: Request) -> Response:
        auth.logout(request)
        resp = RedirectResponse("/dashboard/login", status_code=303)
        resp.delete_cookie(auth.COOKIE, path="/")
        return resp

    # -- pages -----------------------------------------------------------------------------------------------
    @r.get("/dashboard")
    @r.get("/dashboard/")
    def devices_page(request: Request) -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        devices = data.devices(fleet)
        return _page("devices.html", "Devices", s, "/dashboard/", devices=devices, refused=fleet.store.refused(),
                     online_count=sum(1 for d in devices if d.get("status") == "online"))

    @r.get("/dashboard/devices/{device}")
    def device_page(request: Request, device: str) -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        try:
            ctx = data.device_page(request.app.state.fleet, device)
        except ShadowlineError as err:
            return _error(s, "Device", str(err), err.http_status, "/dashboard/")
        return _page("device.html", f"Device {device}", s, "/dashboard/", end_to_end=views.end_to_end,
                     queue_chart=views.queue_chart(ctx.pop("queue_series")), **ctx)

    @r.get("/dashboard/rollouts")
    def rollouts_page(request: Request, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        rollouts = [fleet.rollouts.status(ro["id"]) for ro in reversed(fleet.rollouts.list())]
        for ro in rollouts:
            ro["gate_rows"] = views.gate_rows(ro.get("gates"))
        return _page("rollouts.html", "Rollouts", s, "/dashboard/rollouts", message, rollouts=rollouts,
                     releases=data.releases_newest_first(fleet), csrf=s.csrf, admin=s.admin,
                     can_halt=hasattr(fleet.rollouts, "halt"))

    @r.get("/dashboard/pillars")
    def pillars_page(request: Request, device: str = FLEET, release: str = "", window: str = "24h") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        device = device or FLEET
        try:
            snap, points = data.pillars(fleet, device, release or None, window)
            limits, note = data.limits(fleet, snap, device, release)
        except ShadowlineError as err:
            return _error(s, "Pillars", str(err), 400, "/dashboard/pillars")
        low = decisions.pillar_options(fleet).low_confidence
        return _page("pillars.html", "Four pillars", s, "/dashboard/pillars", snap=snap, h=snap.health,
                     d=snap.distribution, o=snap.overrides, i=snap.impact, FLEET=FLEET, device=device,
                     release=release, window=window, windows=list(WINDOWS),
                     device_options=[FLEET] + [x["id"] for x in fleet.devices.list()],
                     releases=[x["ref"] for x in fleet.releases.list()],
                     latency=views.latency_table(snap.health),
                     histogram=views.confidence_histogram(snap.distribution, low),
                     charts=views.trend_charts(points, limits), limits_note=note,
                     monitor_window=fleet.config.monitor_window)

    @r.get("/dashboard/alerts")
    def alerts_page(request: Request, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        book = request.app.state.fleet.alerts
        current = book.current()
        return _page("alerts.html", "Alerts", s, "/dashboard/alerts", message, current=current,
                     history=book.history(), silences=book.silences(), csrf=s.csrf, admin=s.admin,
                     firing=sum(1 for v in current if v.status == "firing"))

    @r.get("/dashboard/alerts/{alert_id}")
    def alert_page(request: Request, alert_id: str, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        try:
            view = request.app.state.fleet.alerts.get(alert_id)
        except ShadowlineError as err:
            return _error(s, "Alert", str(err), err.http_status, "/dashboard/alerts")
        title = f"Alert: {view.rule} on {'the whole fleet' if view.device == FLEET else view.device}"
        return _page("alert.html", title, s, "/dashboard/alerts", message, v=view, csrf=s.csrf, admin=s.admin)

    @r.post("/dashboard/alerts/{alert_id}/{action}")
    def alert_action(request: Request, alert_id: str, action: str, note: str = Form(""), csrf: str = Form(""),
                     confirm: str = Form("")) -> Response:
        if action not in ("ack", "resolve"):
            return _error(_who(request), "Unknown action", f"no action {action!r}", 404)
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        book = request.app.state.fleet.alerts
        back = f"/dashboard/alerts/{quote(alert_id)}"
        if confirm != "yes":
            what = "Acknowledge" if action == "ack" else "Resolve"
            q = (f"Acknowledge alert {alert_id}? Repeats stop and everyone sees you are on it." if action == "ack" else
                 f"Resolve alert {alert_id} by hand? If its condition still holds, the next evaluation raises it again.")
            return _confirm(what, q, f"{back}/{action}", {"note": note}, s, back)
        try:
            view = book.ack(alert_id, s.name, note) if action == "ack" else book.resolve(alert_id, s.name, note)
            msg = f"alert {alert_id}: {view.status}"
        except ShadowlineError as err:
            msg = f"alert {alert_id}: {err}"
        return RedirectResponse(f"{back}?message={quote(msg)}", status_code=303)

    @r.post("/dashboard/alerts/silence")
    def silence(request: Request, device: str = Form("*"), rule: str = Form("*"), hours: float = Form(4.0),
                reason: str = Form(""), back: str = Form(""), csrf: str = Form(""), confirm: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        fields = {"device": device, "rule": rule, "hours": hours, "reason": reason, "back": back}
        target = f"/dashboard/alerts/{quote(back)}" if back else "/dashboard/alerts"
        if confirm != "yes":
            return _confirm("Silence", f"Silence alerts of rule {rule!r} on device {device!r} for {hours:g} h "
                            f"because: {reason}? They still show here but notify nobody.",
                            "/dashboard/alerts/silence", fields, s, target)
        try:
            sil = request.app.state.fleet.alerts.silence(s.name, reason, timedelta(hours=hours), device, rule)
            msg = f"silenced {sil.rule} on {sil.device} until {sil.until[:16]} UTC"
        except (ShadowlineError, ValidationError) as err:
            msg = f"not silenced: {_short(err)}"
        return RedirectResponse(f"{target}?message={quote(msg)}", status_code=303)

    @r.post("/dashboard/silences/{silence_id}/expire")
    def expire(request: Request, silence_id: str, csrf: str = Form(""), confirm: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        if confirm != "yes":
            return _confirm("End silence", f"End silence {silence_id} now? Matching alerts notify again.",
                            f"/dashboard/silences/{silence_id}/expire", {}, s, "/dashboard/alerts")
        try:
            request.app.state.fleet.alerts.expire(silence_id, s.name)
            msg = f"silence {silence_id} ended"
        except ShadowlineError as err:
            msg = str(err)
        return RedirectResponse(f"/dashboard/alerts?message={quote(msg)}", status_code=303)

    @r.get("/dashboard/shadow")
    def shadow_page(request: Request, release: str = "", group: str = "", days: int = Query(14, ge=1, le=365),
                    message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        report, error = None, ""
        if release and group:
            try:
                report = data.shadow(fleet, release, group, days)
            except ShadowlineError as err:
                error = str(err)
        audit = [a for a in data.audit_log(fleet).entries() if not release or a.release == release]
        cols = sorted({m for row in report.agreement.values() for m in row}) if report else []
        return _page("shadow.html", "Shadow report", s, "/dashboard/shadow", message, r=report,
                     releases=[x["ref"] for x in fleet.releases.list()], release=release, group=group, days=days,
                     adjudicators=", ".join(fleet.config.adjudicators), audit=list(reversed(audit)), csrf=s.csrf,
                     admin=s.admin, error=error, matrix_cols=cols,
                     query=urlencode({"release": release, "group": group, "days": days}),
                     keep={"release": release, "group": group, "days": days, "csrf": s.csrf})

    @r.get("/dashboard/shadow/report")
    def shadow_download(request: Request, release: str, group: str, days: int = Query(14, ge=1, le=365),
                        format: str = Query("json", pattern="^(json|md)$")) -> Response:
        s = _who(request) or auth.bearer_entry(request)
        if s is None:
            return _login_redirect(request)
        try:
            report = data.shadow(request.app.state.fleet, release, group, days)
        except ShadowlineError as err:
            return PlainTextResponse(str(err), status_code=err.http_status)
        if format == "md":
            return PlainTextResponse(report.to_markdown(), media_type="text/markdown")
        return Response(report.to_json(), media_type="application/json")

    # -- controls: each one runs only after the confirmation page's explicit submit ----------------------------
    def _control(request: Request, csrf: str) -> auth.Session | Response:
        """The admin session allowed to act, or the response that refuses (login, or 403)."""
        try:
            return auth.require_admin(request, csrf)
        except auth.LoginRequired:
            return _login_redirect(request)
        except auth.NotAllowed as err:
            return _refused(_who(request), str(err))

    @r.post("/dashboard/rollouts/start")
    def start(request: Request, release: str = Form(...), group: str = Form(...), waves: str = Form("1,100%"),
              shadow_first: str = Form(""), csrf: str = Form(""), confirm: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        fields = {"release": release, "group": group, "waves": waves, "shadow_first": shadow_first}
        if confirm != "yes":
            how = "as candidate beside production (shadow first)" if shadow_first else "replacing the current release"
            return _confirm("Start rollout", f"Start a rollout of {release} to group {group!r} in waves {waves}, "
                            f"{how}?", "/dashboard/rollouts/start", fields, s, "/dashboard/rollouts",
                            data.start_warnings(request.app.state.fleet, release, group, bool(shadow_first)))
        from fleet.rollout import RolloutRequest
        try:
            req = RolloutRequest(release=release, group=group, shadow_first=bool(shadow_first),
                                 waves=[w.strip() for w in waves.split(",") if w.strip()])
            st = request.app.state.fleet.rollouts.start(req)
            msg = f"rollout {st['id']} of {st['release']} to {group} started"
        except (ShadowlineError, ValidationError) as err:
            msg = f"not started: {_short(err)}"
        return RedirectResponse(f"/dashboard/rollouts?message={quote(msg)}", status_code=303)

    @r.post("/dashboard/rollouts/{rid}/{action}")
    def rollout_action(request: Request, rid: str, action: str, csrf: str = Form(""),
                       confirm: str = Form("")) -> Response:
        if action not in ("halt", "rollback"):
            return _error(_who(request), "Unknown action", f"no action {action!r}", 404)
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        rollouts = request.app.state.fleet.rollouts
        if confirm != "yes":
            q = (f"Roll back rollout {rid}? Every device it touched returns to the release it ran before."
                 if action == "rollback" else f"Halt rollout {rid}? No further wave starts; devices keep what they run.")
            return _confirm("Roll back" if action == "rollback" else "Halt", q, f"/dashboard/rollouts/{rid}/{action}",
                            {}, s, "/dashboard/rollouts")
        try:
            if action == "rollback":
                st = rollouts.rollback(rid, reason=f"rolled back from the dashboard by {s.name}")
            elif hasattr(rollouts, "halt"):
                st = rollouts.halt(rid, reason=f"halted from the dashboard by {s.name}")
            else:
                raise ShadowlineError("this fleet service has no halt command (only roll back)")
            msg = f"rollout {rid}: {st['state']}"
        except ShadowlineError as err:
            msg = f"rollout {rid}: {err}"
        return RedirectResponse(f"/dashboard/rollouts?message={quote(msg)}", status_code=303)

    @r.post("/dashboard/alerts/evaluate")
    def evaluate(request: Request, csrf: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        changes = data.evaluate_alerts(request.app.state.fleet)
        msg = f"{len(changes)} alert(s) changed: " + ", ".join(f"{a.device} {a.rule} {a.state}" for a in changes)
        return RedirectResponse(f"/dashboard/alerts?message={quote(msg)}", status_code=303)

    @r.post("/dashboard/shadow/signoff")
    def signoff(request: Request, release: str = Form(...), group: str = Form(...), note: str = Form(""),
                days: int = Form(14), csrf: str = Form(""), confirm: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        fields = {"release": release, "group": group, "note": note, "days": days}
        back = _shadow_url(release, group, days)
        if confirm != "yes":
            return _confirm("Sign off", f"Sign off the shadow period of {release} on {group} as {s.name}?",
                            "/dashboard/shadow/signoff", fields, s, back)
        try:
            data.record_signoff(request.app.state.fleet, release, group, SignOff(by=s.name, note=note))
            msg = f"signed off by {s.name}"
        except ShadowlineError as err:
            msg = f"not signed off: {err}"
        return RedirectResponse(back + f"&message={quote(msg)}", status_code=303)

    @r.post("/dashboard/shadow/promote")
    def promote(request: Request, release: str = Form(...), group: str = Form(...), reason: str = Form(""),
                days: int = Form(14), csrf: str = Form(""), confirm: str = Form("")) -> Response:
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        fleet = request.app.state.fleet
        fields = {"release": release, "group": group, "reason": reason, "days": days}
        back = _shadow_url(release, group, days)
        if confirm != "yes":
            extra = f" overriding the exit criteria because: {reason}" if reason.strip() else ""
            return _confirm("Promote", f"Promote {release} from shadow to production on {group}{extra}?",
                            "/dashboard/shadow/promote", fields, s, back)
        try:
            done = decisions.promote(fleet, release, group, actor=s.name, admin=s.admin, reason=reason, days=days)
            msg = (f"promoted: {done.release} rolling out to {group} (rollout {done.rollout})"
                   + (" under an admin override" if done.decision.overridden else ""))
        except (ShadowlineError, ValidationError) as err:
            msg = f"promotion refused: {_short(err)}"
        return RedirectResponse(back + f"&message={quote(msg)}", status_code=303)

    # -- Prometheus ------------------------------------------------------------------------------------------
    @r.get("/metrics")
    def metrics(request: Request) -> Response:
        entry = auth.bearer_entry(request)
        if entry is None and _who(request) is None:
            return PlainTextResponse("a viewer token is required (Authorization: Bearer ...)", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return Response(render_metrics(request.app.state.fleet), media_type=METRICS_CONTENT_TYPE)

    return r


def _short(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(err)


def _shadow_url(release: str, group: str, days: int) -> str:
    return f"/dashboard/shadow?release={quote(release)}&group={quote(group)}&days={days}"
