"""The daemon's local HTTP API (Starlette) and the review page it serves.

The API sees the device through `LocalDevice`, a narrow interface (the daemon implements it): readiness, the
active release, a status summary, the Prometheus exposition, submitting an image, and the store's records. It never
reaches into the frame path's threads, queue or pipeline.

Starlette directly, not FastAPI (which the fleet service uses): the device needs neither an OpenAPI document nor
dependency injection, and FastAPI's import and route building cost the daemon's start about 0.1 s of CPU and 6 MB
(docs/daemon.md, "Lean start"). Request bodies and queries are still validated by pydantic models, and a request that
does not validate gets FastAPI's answer: 422 `{"detail": [errors]}` with each error's `loc` starting at `body` or
`query` (the review page shows it); an inspector's login is checked before the body is validated."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from edge.config import DeviceConfig
from edge.metrics import content_type as metrics_content_type
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


class PredictionsQuery(BaseModel):
    limit: int = 100
    decision: str | None = None
    role: str | None = None
    source: str | None = None


class ReviewsQuery(BaseModel):
    limit: int = 100
    prediction_id: str | None = None


class QueueQuery(BaseModel):
    limit: int = 50


M = TypeVar("M", bound=BaseModel)


class RequestInvalid(Exception):
    """A request's body or query did not validate: answered 422 `{"detail": errors}`."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def validate(model: type[M], data: Any, where: str) -> M:
    """`data` as `model`, or RequestInvalid with pydantic's errors, each `loc` starting at `where` (body, query)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = json.loads(err.json(include_url=False))
        raise RequestInvalid([{**e, "loc": [where, *e["loc"]]} for e in errors]) from err


def query(request: Request, model: type[M]) -> M:
    return validate(model, dict(request.query_params), "query")


async def json_body(request: Request) -> Any:
    """The body, parsed when it is sent as JSON (application/json or */*+json), else its bytes; None when empty.
    JSON that does not parse is a 422 naming where it broke, as FastAPI answers it."""
    raw = await request.body()
    if not raw:
        return None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise RequestInvalid([{"type": "json_invalid", "loc": ["body", err.pos], "msg": "JSON decode error",
                               "input": {}, "ctx": {"error": err.msg}}]) from err
    except ValueError as err:  # not UTF-8
        raise HTTPException(400, "There was an error parsing the body") from err


def body_as(model: type[M], data: Any) -> M:
    if data is None:
        raise RequestInvalid([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    return validate(model, data, "body")


class Json(JSONResponse):
    """A route's result as JSON; what the json module cannot encode (a path, a datetime, a pydantic model) is
    encoded as pydantic encodes it (FastAPI did the same for the routes' return values)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=to_jsonable_python).encode("utf-8")


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


async def _domain_error(_: Request, err: Exception) -> Response:
    assert isinstance(err, ShadowlineError)
    headers = {"Retry-After": "1"} if err.http_status == 503 else None
    return JSONResponse({"error": str(err), "type": type(err).__name__}, err.http_status, headers=headers)


async def _invalid(_: Request, err: Exception) -> Response:
    assert isinstance(err, RequestInvalid)
    return JSONResponse({"detail": err.errors}, 422)


async def _http_error(_: Request, err: Exception) -> Response:
    """Starlette's own refusals (404, 405, 400) as JSON `{"detail": ...}`, as FastAPI answers them."""
    assert isinstance(err, HTTPException)
    if err.status_code in (204, 304):
        return Response(status_code=err.status_code, headers=err.headers)
    return JSONResponse({"detail": err.detail}, err.status_code, headers=err.headers)


def create_app(daemon: LocalDevice) -> Starlette:
    api = daemon.config.api
    inspectors = Inspectors(api.inspectors_file)
    inspector_sync = None
    if api.inspectors_sync_url and api.inspectors_file is not None:
        token = daemon.config.fleet.http_token if daemon.config.fleet is not None else None
        inspector_sync = InspectorSync(api.inspectors_sync_url, daemon.device_id, token, api.inspectors_file,
                                       api.inspectors_sync_s).start()

    def inspector(request: Request) -> str:
        """Every review route's login: the logged-in inspector (401 otherwise), checked before the request's body
        and query are validated."""
        if request.method == "POST":
            forbid_cross_site(request.headers.get("origin"), request.headers.get("host"))
        return inspectors.who(request.headers.get("authorization"), request.cookies.get(COOKIE))

    def healthz(_: Request) -> Response:
        """Liveness: the process answers."""
        return JSONResponse({"ok": True})

    def readyz(_: Request) -> Response:
        """Readiness: a release is loaded and checked, the worker runs and is not stalled."""
        ready = daemon.ready
        return JSONResponse({"ready": ready, "release": daemon.active_ref()}, 200 if ready else 503)

    def metrics(_: Request) -> Response:
        """Prometheus text exposition (prometheus_client): counters, stage latency histograms, queue and
        retention gauges, shadowline_build_info and shadowline_release_info."""
        return Response(daemon.metrics_text(), media_type=metrics_content_type())

    def status(_: Request) -> Response:
        return Json(daemon.status())

    async def infer(request: Request) -> Response:
        """Body: the image bytes. Answers the committed prediction record (422 with the record on a bad image)."""
        limit = int(daemon.config.limits.max_upload_mb * 1024 * 1024)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ImageError(f"upload over {daemon.config.limits.max_upload_mb} MB")
        suffix = SUFFIXES.get(request.headers.get("content-type", "").split(";")[0].strip(), ".img")
        out = await run_in_threadpool(daemon.submit, bytes(data), suffix, daemon.config.api.infer_timeout_s)
        if out.decision == "retry":
            return JSONResponse({"error": out.error}, 503, headers={"Retry-After": "1"})
        body = {"record": out.record, "candidate": out.candidate}
        return JSONResponse(body if out.decision != "error" else {"error": out.error, **body},
                            422 if out.decision == "error" else 200)

    def predictions(request: Request) -> Response:
        inspector(request)
        q = query(request, PredictionsQuery)
        return Json(daemon.store.predictions(min(q.limit, 1000), q.decision, q.role, q.source))

    def prediction(request: Request) -> Response:
        inspector(request)
        return Json(daemon.store.prediction(request.path_params["pid"]))

    def prediction_image(request: Request) -> Response:
        inspector(request)
        pid = request.path_params["pid"]
        path = daemon.store.prediction(pid).get("image_path")
        if not path or not Path(path).is_file():
            raise NotFound(f"prediction {pid}: no kept image")
        return FileResponse(path)

    def review_queue(request: Request) -> Response:
        inspector(request)
        return Json(daemon.store.review_queue(min(query(request, QueueQuery).limit, 500)))

    def reviews(request: Request) -> Response:
        inspector(request)
        q = query(request, ReviewsQuery)
        return Json(daemon.store.reviews(min(q.limit, 1000), q.prediction_id))

    async def add_review(request: Request) -> Response:
        data = await json_body(request)  # JSON that does not parse is refused first, as FastAPI does
        who = await run_in_threadpool(inspector, request)
        body = body_as(ReviewIn, data)

        def save() -> dict[str, Any]:
            review = build_review(body, daemon.store.prediction(body.prediction_id), daemon.device_id, who)
            daemon.store.add_review(review)
            return review.model_dump(mode="json")

        return Json(await run_in_threadpool(save), 201)

    async def login(request: Request) -> Response:
        """Exchange an inspector token for a session cookie (HttpOnly, SameSite=Strict) for the review page."""
        body = body_as(LoginIn, await json_body(request))

        def session() -> Response:
            forbid_cross_site(request.headers.get("origin"), request.headers.get("host"))
            sid, name = inspectors.login(body.token)
            resp = JSONResponse({"inspector": name})
            resp.set_cookie(COOKIE, sid, max_age=SESSION_S, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
            return resp

        return await run_in_threadpool(session)

    def logout(request: Request) -> Response:
        inspectors.logout(request.cookies.get(COOKIE, ""))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    def whoami(request: Request) -> Response:
        return Json({"inspector": inspector(request), "device": daemon.device_id})

    def review_page(request: Request) -> Response:
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

    get: list[tuple[str, Callable[[Request], Any]]] = [
        ("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics), ("/v1/status", status),
        ("/v1/predictions", predictions), ("/v1/predictions/{pid}", prediction),
        ("/v1/predictions/{pid}/image", prediction_image), ("/v1/review/queue", review_queue),
        ("/v1/reviews", reviews), ("/v1/whoami", whoami), ("/", review_page), ("/review", review_page)]
    post: list[tuple[str, Callable[[Request], Any]]] = [
        ("/v1/infer", infer), ("/v1/reviews", add_review), ("/v1/login", login), ("/v1/logout", logout)]
    routes = [Route(path, fn, methods=["GET"]) for path, fn in get]
    routes += [Route(path, fn, methods=["POST"]) for path, fn in post]
    app = Starlette(routes=routes, exception_handlers={ShadowlineError: _domain_error, RequestInvalid: _invalid,
                                                       HTTPException: _http_error})
    app.state.inspectors = inspectors
    app.state.inspector_sync = inspector_sync
    return app
