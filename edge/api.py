"""The daemon's local HTTP API (FastAPI) and the review page it serves.

The API sees the device through `LocalDevice`, a narrow interface (the daemon implements it): readiness, the
active release, a status summary, the Prometheus exposition, submitting an image, and the store's records. It never
reaches into the frame path's threads, queue or pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from edge.config import DeviceConfig
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

REVIEW_PAGE = Path(__file__).parent / "review" / "index.html"
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp", "image/tiff": ".tif",
            "image/webp": ".webp", "image/gif": ".gif"}


class ReviewIn(BaseModel):
    """An inspector's verdict on one prediction."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str
    verdict: Literal["confirm", "false_positive", "missed_defect", "bad_image"]
    defect_class: str | None = Field(None, description="missed_defect: the class the model missed")
    inspector: str = Field("inspector", min_length=1, max_length=100)
    note: str = Field("", max_length=2000)


def is_override(verdict: str, decision: str, flagged: list[str], defect_class: str | None) -> bool:
    """A verdict that disagrees with the model's decision (the fleet computes it again with the same rule)."""
    try:
        return verdict_override(verdict, decision, flagged, defect_class)
    except ProtocolError as err:
        raise Conflict(str(err)) from err


def build_review(body: ReviewIn, pred: dict[str, Any], device: str) -> ReviewRecord:
    flagged = [c for c, _ in pred.get("flagged", [])]
    return ReviewRecord(
        prediction_id=body.prediction_id, device=device, inspector=body.inspector, verdict=body.verdict,
        defect_class=body.defect_class, override=is_override(body.verdict, pred["decision"], flagged, body.defect_class),
        model_decision=pred["decision"], release=pred["release"], revision=pred["revision"], models=pred["models"],
        thresholds=pred["thresholds"], top_label=pred.get("top_label"), top_score=pred.get("top_score"),
        note=body.note)


def create_app(daemon: LocalDevice) -> FastAPI:
    app = FastAPI(title="Shadowline edge daemon", version="1")

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
                    source: str | None = None) -> list[dict]:
        return daemon.store.predictions(min(limit, 1000), decision, role, source)

    @app.get("/v1/predictions/{pid}")
    def prediction(pid: str) -> dict:
        return daemon.store.prediction(pid)

    @app.get("/v1/predictions/{pid}/image")
    def prediction_image(pid: str) -> FileResponse:
        path = daemon.store.prediction(pid).get("image_path")
        if not path or not Path(path).is_file():
            raise NotFound(f"prediction {pid}: no kept image")
        return FileResponse(path)

    @app.get("/v1/review/queue")
    def review_queue(limit: int = 50) -> list[dict]:
        return daemon.store.review_queue(min(limit, 500))

    @app.get("/v1/reviews")
    def reviews(limit: int = 100, prediction_id: str | None = None) -> list[dict]:
        return daemon.store.reviews(min(limit, 1000), prediction_id)

    @app.post("/v1/reviews", status_code=201)
    def add_review(body: ReviewIn) -> dict:
        review = build_review(body, daemon.store.prediction(body.prediction_id), daemon.device_id)
        daemon.store.add_review(review)
        return review.model_dump(mode="json")

    @app.get("/", include_in_schema=False)
    @app.get("/review", include_in_schema=False)
    def review_page() -> HTMLResponse:
        return HTMLResponse(REVIEW_PAGE.read_text())

    return app
