"""The dashboard's routes: pages, confirmed controls (start, halt, roll back, sign off, promote), report
downloads and Prometheus /metrics."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import ValidationError

from fleet import decisions
from fleet.analytics.shadow import SignOff
from fleet.analytics.windows import FLEET
from fleet.dashboard import auth, data
from fleet.dashboard.alertviews import alert_body, alerts_body
from fleet.dashboard.layout import confirm_page, e, hidden, page
from fleet.dashboard.metrics import METRICS_CONTENT_TYPE, render_metrics
from fleet.dashboard.views import devices_body, pillars_body, refused_body, rollouts_body, shadow_body
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


def _refused(s: auth.Session | None, why: str, status: int = 403) -> HTMLResponse:
    return _html(page("Not allowed", f"<p id=error>{e(why)}</p>", s.name if s else None), status)


def build_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    # -- session ---------------------------------------------------------------------------------------------
    @r.get("/dashboard/login")
    def login_page(next: str = "/dashboard/", failed: int = 0) -> HTMLResponse:
        msg = "That token is not valid for the dashboard (it needs the viewer or admin role)." if failed else ""
        body = (f'<form method="post" action="/dashboard/login">{hidden({"next": next})}'
                '<label>API token <input id="token" name="token" type="password" size="50" autofocus></label> '
                '<button id="login" type="submit">Log in</button></form>')
        return _html(page("Log in", body, message=msg))

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
        body = devices_body(data.devices(fleet)) + refused_body(fleet.store.refused())
        return _html(page("Devices", body, s.name, "/dashboard/"))

    @r.get("/dashboard/rollouts")
    def rollouts_page(request: Request, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        rollouts = [fleet.rollouts.status(ro["id"]) for ro in reversed(fleet.rollouts.list())]
        body = rollouts_body(rollouts, fleet.releases.list(), s.csrf, s.admin,
                             hasattr(fleet.rollouts, "halt"))
        return _html(page("Rollouts", body, s.name, "/dashboard/rollouts", message))

    @r.get("/dashboard/pillars")
    def pillars_page(request: Request, device: str = FLEET, release: str = "", window: str = "24h") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        fleet = request.app.state.fleet
        try:
            snap, points = data.pillars(fleet, device or FLEET, release or None, window)
        except ShadowlineError as err:
            return _html(page("Pillars", f"<p id=error>{e(err)}</p>", s.name, "/dashboard/pillars"), 400)
        body = pillars_body(snap, points, [d["id"] for d in fleet.devices.list()],
                            [x["ref"] for x in fleet.releases.list()], device or FLEET, release, window)
        return _html(page("Four pillars", body, s.name, "/dashboard/pillars"))

    @r.get("/dashboard/alerts")
    def alerts_page(request: Request, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        book = request.app.state.fleet.alerts
        body = alerts_body(book.current(), book.history(), book.silences(), s.csrf, s.admin)
        return _html(page("Alerts", body, s.name, "/dashboard/alerts", message))

    @r.get("/dashboard/alerts/{alert_id}")
    def alert_page(request: Request, alert_id: str, message: str = "") -> Response:
        s = _who(request)
        if s is None:
            return _login_redirect(request)
        try:
            view = request.app.state.fleet.alerts.get(alert_id)
        except ShadowlineError as err:
            return _html(page("Alert", f"<p id=error>{e(err)}</p>", s.name, "/dashboard/alerts"), err.http_status)
        title = f"Alert: {view.rule} on {'the whole fleet' if view.device == FLEET else view.device}"
        return _html(page(title, alert_body(view, s.csrf, s.admin), s.name, "/dashboard/alerts", message))

    @r.post("/dashboard/alerts/{alert_id}/{action}")
    def alert_action(request: Request, alert_id: str, action: str, note: str = Form(""), csrf: str = Form(""),
                     confirm: str = Form("")) -> Response:
        if action not in ("ack", "resolve"):
            return _html(page("Unknown action", f"<p id=error>no action {e(action)!r}</p>"), 404)
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        book = request.app.state.fleet.alerts
        back = f"/dashboard/alerts/{quote(alert_id)}"
        if confirm != "yes":
            what = "Acknowledge" if action == "ack" else "Resolve"
            q = (f"Acknowledge alert {alert_id}? Repeats stop and everyone sees you are on it." if action == "ack" else
                 f"Resolve alert {alert_id} by hand? If its condition still holds, the next evaluation raises it again.")
            return _html(confirm_page(what, q, f"{back}/{action}", {"note": note}, s.csrf, s.name, back))
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
            return _html(confirm_page("Silence", f"Silence alerts of rule {rule!r} on device {device!r} for {hours:g} h "
                                      f"because: {reason}? They still show here but notify nobody.",
                                      "/dashboard/alerts/silence", fields, s.csrf, s.name, target))
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
            return _html(confirm_page("End silence", f"End silence {silence_id} now? Matching alerts notify again.",
                                      f"/dashboard/silences/{silence_id}/expire", {}, s.csrf, s.name,
                                      "/dashboard/alerts"))
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
        body = shadow_body(report, [x["ref"] for x in fleet.releases.list()], release, group, days,
                           ", ".join(fleet.config.adjudicators), audit, s.csrf, s.admin, error)
        return _html(page("Shadow report", body, s.name, "/dashboard/shadow", message))

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
            return _html(confirm_page("Start rollout", f"Start a rollout of {release} to group {group!r} in waves "
                                      f"{waves}, {how}?", "/dashboard/rollouts/start", fields, s.csrf, s.name,
                                      "/dashboard/rollouts"))
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
            return _html(page("Unknown action", f"<p id=error>no action {e(action)!r}</p>"), 404)
        s = _control(request, csrf)
        if isinstance(s, Response):
            return s
        rollouts = request.app.state.fleet.rollouts
        if confirm != "yes":
            q = (f"Roll back rollout {rid}? Every device it touched returns to the release it ran before."
                 if action == "rollback" else f"Halt rollout {rid}? No further wave starts; devices keep what they run.")
            return _html(confirm_page("Roll back" if action == "rollback" else "Halt", q,
                                      f"/dashboard/rollouts/{rid}/{action}", {}, s.csrf, s.name, "/dashboard/rollouts"))
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
            return _html(confirm_page("Sign off", f"Sign off the shadow period of {release} on {group} as {s.name}?",
                                      "/dashboard/shadow/signoff", fields, s.csrf, s.name, back))
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
            return _html(confirm_page("Promote", f"Promote {release} from shadow to production on {group}{extra}?",
                                      "/dashboard/shadow/promote", fields, s.csrf, s.name, back))
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
