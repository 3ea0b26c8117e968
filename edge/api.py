"""The daemon's local HTTP API (FastAPI) and the review page it serves.

The API sees the device through `LocalDevice`, a narrow interface (the daemon implements it): readiness, the
active release, a status summary, the Prometheus exposition, submitting an image, and the store's records. It never
reaches into the frame path's threads, queue or pipeline."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from edge.config import DeviceConfig
from edge.review_auth import COOKIE, SESSION_S, Inspectors, InspectorSync, forbid_cross_site
from edge.sources import Outcome
from edge.store import Store
from fleet.protocol import ProtocolError, ReviewRecord, verdict_override
from runtime.errors import Conflict, ImageError, NotFound, ShadowlineError


class LocalDevice(Protocol):
    """What the local API needs from the device."""

    device_id: str
    config: DeviceConfig  # api and limits sections
    store: Store  # prediction and review records

    @property
    def ready(self) -> bool:
        """A release is loaded and the frame path runs, unstalled."""

    def active_ref(self) -> str | None:
        """The active release, as name@revision."""

    def status(self) -> dict:
        """The summary served at /v1/status."""

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition."""

    def submit(self, data: bytes, suffix: str, timeout: float) -> Outcome:
        """Decide one uploaded image and return once its record is committed (QueueFull when it cannot)."""

REVIEW_DIR = Path(__file__).parent / "review"
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp", "image/tiff": ".tif",
            "image/webp": ".webp", "image/gif": ".gif"}


class ReviewIn(BaseModel):
    """An inspector's verdict on one prediction. The inspector is whoever logged in (their token), not a field."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(max_length=128)
    verdict: Literal["confirm", "false_positive", "missed_defect", "bad_image"]
    defect_class: str | None = Field(None, max_length=200, description="missed_defect: the class the model missed")
    note: str = Field("", max_length=2000)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200, description="the inspector token the fleet issued")


def is_override(verdict: str, decision: str, flagged: list[str], defect_class: str | None) -> bool:
    """A verdict that disagrees with the model's decision (the fleet computes it again with the same rule)."""
    try:
        return verdict_override(verdict, decision, flagged, defect_class)
    except ProtocolError as err:
        raise Conflict(str(err)) from err


def build_review(body: ReviewIn, pred: dict[str, Any], device: str, inspector: str) -> ReviewRecord:
    flagged = [c for c, _ in pred.get("flagged", [])]
    return ReviewRecord(
        prediction_id=body.prediction_id, device=device, inspector=inspector, verdict=body.verdict,
        defect_class=body.defect_class, override=is_override(body.verdict, pred["decision"], flagged, body.defect_class),
        model_decision=pred["decision"], release=pred["release"], revision=pred["revision"], models=pred["models"],
        thresholds=pred["thresholds"], top_label=pred.get("top_label"), top_score=pred.get("top_score"),
        note=body.note)


@functools.cache
def _templates() -> Any:
    """The review page's templates, loaded by its first request (Jinja2 is not needed to become ready)."""
    import jinja2

    # autoescape: file names, labels and inspector names come from outside and must never become markup
    return jinja2.Environment(loader=jinja2.FileSystemLoader(REVIEW_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def create_app(daemon: LocalDevice) -> FastAPI:
    app = FastAPI(title="Shadowline edge daemon", version="1")
    api = daemon.config.api
    inspectors = Inspectors(api.inspectors_file)
    app.state.inspectors = inspectors
    app.state.inspector_sync = None
    if api.inspectors_sync_url and api.inspectors_file is not None:
        token = daemon.config.fleet.http_token if daemon.config.fleet is not None else None
        app.state.inspector_sync = InspectorSync(api.inspectors_sync_url, daemon.device_id, token,
                                                 api.inspectors_file, api.inspectors_sync_s).start()

    def inspector(request: Request) -> str:
        """Dependency of every review route: the logged-in inspector (401 otherwise)."""
        if request.method == "POST":
            forbid_cross_site(request.headers.get("origin"), request.headers.get("host"))
        return inspectors.who(request.headers.get("authorization"), request.cookies.get(COOKIE))

    @app.exception_handler(ShadowlineError)
    async def _domain_error(_: Request, err: ShadowlineError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.http_status == 503 else None
        return JSONResponse({"error": str(err), "type": type(err).__name__}, err.http_status, headers=headers)

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: a release is loaded and checked, the worker runs and is not stalled."""
        ready = daemon.ready
        return JSONResponse({"ready": ready, "release": daemon.active_ref()}, 200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition (prometheus_client): counters, stage latency histograms, queue and
        retention gauges, shadowline_build_info and shadowline_release_info."""
        return Response(daemon.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status")
    def status() -> dict:
        return daemon.status()

    @app.post("/v1/infer")
    async def infer(request: Request) -> JSONResponse:
        """Body: the image bytes. Answers the committed prediction record (422 with the record on a bad image)."""
        limit = int(daemon.config.limits.max_upload_mb * 1024 * 1024)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ImageError(f"upload over {daemon.config.limits.max_upload_mb} MB")
        suffix = SUFFIXES.get(request.headers.get("content-type", "").split(";")[0].strip(), ".img")
        import anyio

        out = await anyio.to_thread.run_sync(lambda: daemon.submit(bytes(data), suffix,
                                                                   daemon.config.api.infer_timeout_s))
        if out.decision == "retry":
            return JSONResponse({"error": out.error}, 503, headers={"Retry-After": "1"})
        body = {"record": out.record, "candidate": out.candidate}
        return JSONResponse(body if out.decision != "error" else {"error": out.error, **body},
                            422 if out.decision == "error" else 200)

    @app.get("/v1/predictions")
    def predictions(limit: int = 100, decision: str | None = None, role: str | None = None,
                    source: str | None = None, _: str = Depends(inspector)) -> list[dict]:
        return daemon.store.predictions(min(limit, 1000), decision, role, source)

    @app.get("/v1/predictions/{pid}")
    def prediction(pid: str, _: str = Depends(inspector)) -> dict:
        return daemon.store.prediction(pid)

    @app.get("/v1/predictions/{pid}/image")
    def prediction_image(pid: str, _: str = Depends(inspector)) -> FileResponse:
        path = daemon.store.prediction(pid).get("image_path")
        if not path or not Path(path).is_file():
            raise NotFound(f"prediction {pid}: no kept image")
        return FileResponse(path)

    @app.get("/v1/review/queue")
    def review_queue(limit: int = 50, _: str = Depends(inspector)) -> list[dict]:
        return daemon.store.review_queue(min(limit, 500))

    @app.get("/v1/reviews")
    def reviews(limit: int = 100, prediction_id: str | None = None, _: str = Depends(inspector)) -> list[dict]:
        return daemon.store.reviews(min(limit, 1000), prediction_id)

    @app.post("/v1/reviews", status_code=201)
    def add_review(body: ReviewIn, who: str = Depends(inspector)) -> dict:
        review = build_review(body, daemon.store.prediction(body.prediction_id), daemon.device_id, who)
        daemon.store.add_review(review)
        return review.model_dump(mode="json")

    @app.post("/v1/login")
    def login(body: LoginIn, request: Request) -> JSONResponse:
        """Exchange an inspector token for a session cookie (HttpOnly, SameSite=Strict) for the review page."""
        forbid_cross_site(request.headers.get("origin"), request.headers.get("host"))
        sid, name = inspectors.login(body.token)
        resp = JSONResponse({"inspector": name})
        resp.set_cookie(COOKIE, sid, max_age=SESSION_S, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/v1/logout")
    def logout(request: Request) -> JSONResponse:
        inspectors.logout(request.cookies.get(COOKIE, ""))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/v1/whoami")
    def whoami(who: str = Depends(inspector)) -> dict:
        return {"inspector": who, "device": daemon.device_id}

    @app.get("/", include_in_schema=False)
    @app.get("/review", include_in_schema=False)
    def review_page(request: Request) -> HTMLResponse:
        try:
            who: str | None = inspectors.who(request.headers.get("authorization"), request.cookies.get(COOKIE))
        except ShadowlineError:
            who = None
        html = _templates().get_template("index.html").render(device=daemon.device_id, inspector=who,
                                                              release=daemon.active_ref() or "")
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                                                      "style-src 'self' 'unsafe-inline'; "
                                                                      "script-src 'self' 'unsafe-inline'"})

    return app
