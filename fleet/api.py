"""The fleet's HTTP API (FastAPI, OpenAPI at /docs): admin endpoints behind bearer tokens with roles, artifact
downloads with Range requests, and the mobile endpoints for iOS inspectors. Domain errors become HTTP statuses
here, once. The Fleet object is `app.state.fleet` (the dashboard router reads the store through it)."""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from fleet.api_images import build_images_router
from fleet.api_mobile import build_mobile_router
from fleet.apidocs import mount_docs
from fleet.artifacts import resolve, targeted_artifacts
from fleet.http_guard import BODY_LIMIT_KEY, BodyOverCap, GuardMiddleware, require
from fleet.protocol import ReleaseSpec
from fleet.releases import ThresholdChange
from fleet.rollout import RolloutRequest
from fleet.security import TokenEntry, device_of
from fleet.service import Fleet
from runtime.errors import AccessDenied, BundleError, ConfigError, NotFound, ShadowlineError, TooLarge

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every refusal of this API: the message names the problem; `type` is the error class."""

    error: str = Field(description="what was wrong, naming the field, value or limit")
    type: str = Field(description="the error class, e.g. Unauthorized, NotFound, TooLarge")
    problems: list[str] | None = Field(None, description="422 from validation: `key.path: message` per problem")


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Answers every operation of the API can give (OpenAPI `responses`), the truth a client can code against.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _doc("bad request: the message names the key or value"),
    401: _doc("no token, or an unknown or revoked one (checked before the body is read)"),
    403: _doc("the token lacks the role, or (device tokens) the thing belongs to another device"),
    404: _doc("no such thing (bundle, release, device, rollout, artifact, prediction)"),
    413: _doc("the body is over the route's limit (announced or while it streams)"),
    422: _doc("the body or a parameter does not fit the schema, or a bundle failed verification"),
}
Answers = dict[int | str, dict[str, Any]]
CONFLICT: Answers = {409: _doc("conflicts with the current state (a running rollout, a bundle id taken)")}
UNAVAILABLE: Answers = {503: _doc("the fleet is not connected to its broker: nothing was sent")}


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[str] | None = Field(None, description="replace the device's groups")
    tags: dict[str, str] | None = Field(None, description="replace the device's tags")


class HaltRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("manual halt", max_length=500, description="why the rollout is halted (kept on it)")


def _artifact_response(request: Request, name: str, who: TokenEntry) -> Response:
    """Starlette's FileResponse serves Range requests (single, suffix, multi-range as multipart/byteranges, 416
    past the end). It is handed the stat that `resolve` checked against the registry, so the length it announces
    is the registered size. A device token gets only artifacts of releases the fleet sent to its device."""
    fleet: Fleet = request.app.state.fleet
    path, size, sha = resolve(fleet.store, fleet.artifacts_dir, name)
    device = device_of(who)
    if device is not None and "admin" not in who.roles and "inspector" not in who.roles \
            and name not in targeted_artifacts(fleet.store, device):
        raise AccessDenied(f"artifact {name!r} belongs to no release sent to device {device!r}")
    st = os.stat(path)
    if st.st_size != size:  # replaced between the check and now: refuse rather than announce another length
        raise BundleError(f"artifact {name!r} changed on disk while being served; retry")
    media = "application/x-tar" if name.endswith(".tar") else "application/zip"
    return FileResponse(path, media_type=media, stat_result=st,
                        headers={"ETag": f'"{sha}"', "X-Content-SHA256": sha})


def build_router() -> APIRouter:
    r = APIRouter(responses=ERRORS)
    admin, viewer = require("admin"), require("viewer")

    @r.post("/api/bundles", tags=["bundles"], summary="Push a signed bundle (.tar body); verified before storing",
            responses=CONFLICT, openapi_extra={
                BODY_LIMIT_KEY: "upload",
                "requestBody": {"required": True, "description": "the bundle as an uncompressed tar",
                                "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def push_bundle(request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        fleet: Fleet = request.app.state.fleet
        # refusals name what the admin sent (the CLI sends the file's name), never the server's temporary file
        sent = Path(request.headers.get("x-bundle-name", "")).name[:200] or "the uploaded bundle"
        cap = int(fleet.config.max_upload_mb * (1 << 20))
        too_big = f"{sent}: bundle upload is over the limit of {fleet.config.max_upload_mb:g} MB (max_upload_mb)"
        if int(request.headers.get("content-length") or 0) > cap:
            raise TooLarge(too_big)
        fleet.artifacts_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=fleet.artifacts_dir)
        try:
            n = 0
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > cap:
                        raise TooLarge(too_big)
                    fh.write(chunk)
            if n == 0:
                raise ConfigError("empty body: send the bundle .tar as the request body")
            return fleet.registry.push(Path(tmp), label=sent)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @r.get("/api/bundles", tags=["bundles"])
    def list_bundles(request: Request, _: TokenEntry = Depends(viewer)) -> list[dict[str, Any]]:
        return request.app.state.fleet.registry.list()

    @r.post("/api/releases", tags=["releases"], summary="Create a release; the fleet assigns its revision",
            responses=CONFLICT)
    def create_release(spec: ReleaseSpec, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.releases.create(spec).model_dump(mode="json")

    @r.post("/api/releases/{ref}/thresholds", tags=["releases"], responses=CONFLICT,
            summary="New revision with one stage's thresholds changed, same bundles")
    def tune_release(ref: str, change: ThresholdChange, request: Request,
                     _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.releases.tune(ref, change).model_dump(mode="json")

    @r.get("/api/releases", tags=["releases"])
    def list_releases(request: Request, _: TokenEntry = Depends(viewer)) -> list[dict[str, Any]]:
        return request.app.state.fleet.releases.list()

    @r.get("/api/releases/{ref}", tags=["releases"])
    def get_release(ref: str, request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        return request.app.state.fleet.releases.get(ref).model_dump(mode="json")

    @r.get("/api/devices", tags=["devices"])
    def list_devices(request: Request, group: str | None = None, tag: str | None = None,
                     _: TokenEntry = Depends(viewer)) -> list[dict[str, Any]]:
        return request.app.state.fleet.devices.list(group=group, tag=tag)

    @r.get("/api/devices/{device}/capability", tags=["devices"],
           summary="The device's latest capability record (hwbench --publish), as the device sent it")
    def device_capability(device: str, request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        ev = request.app.state.fleet.store.latest_events("capability", device=device).get(device)
        if ev is None:
            raise NotFound(f"no capability record from device {device!r}")
        return ev.model_dump(mode="json")

    @r.put("/api/devices/{device}", tags=["devices"], summary="Set groups/tags (registers the device if new)")
    def update_device(device: str, body: DeviceUpdate, request: Request,
                      _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        devices = request.app.state.fleet.devices
        return devices.add(device, body.groups, body.tags)

    @r.post("/api/rollouts", tags=["rollouts"], summary="Start a staged rollout of a release to a group",
            responses={**CONFLICT, **UNAVAILABLE})
    def start_rollout(req: RolloutRequest, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.start(req)

    @r.get("/api/rollouts", tags=["rollouts"])
    def list_rollouts(request: Request, _: TokenEntry = Depends(viewer)) -> list[dict[str, Any]]:
        return request.app.state.fleet.rollouts.list()

    @r.get("/api/rollouts/{rid}", tags=["rollouts"])
    def rollout_status(rid: str, request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.status(rid)

    @r.post("/api/rollouts/{rid}/rollback", tags=["rollouts"], responses={**CONFLICT, **UNAVAILABLE},
            summary="Return every device the rollout touched to its previous release")
    def rollback(rid: str, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.rollback(rid)

    @r.post("/api/rollouts/{rid}/halt", tags=["rollouts"], responses=CONFLICT,
            summary="Stop a running rollout from starting further waves; devices stay where they are")
    def halt(rid: str, request: Request, body: HaltRequest | None = None,
             _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.halt(rid, (body or HaltRequest()).reason)

    @r.get("/api/ingest", tags=["ingest"],
           summary="Ingest counters, malformed messages by topic, refused records by device and reason")
    def ingest_stats(request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        fleet: Fleet = request.app.state.fleet
        return {**fleet.ingest.stats.as_dict(),
                "stored": {k: fleet.store.count(k) for k in ("predictions", "reviews", "metrics", "alerts", "events")},
                "malformed_by_topic": fleet.store.malformed(), "refused": fleet.store.refused()}

    range_answers: Answers = {206: {"description": "the requested range"},
                     416: {"description": "the range starts past the end of the artifact"}}

    @r.get("/artifacts/{name}", tags=["artifacts"], responses=range_answers,
           summary="Download a bundle .tar or Core ML .zip; Range requests resume")
    def artifact(name: str, request: Request, who: TokenEntry = Depends(require("device", "inspector"))) -> Response:
        return _artifact_response(request, name, who)

    @r.head("/artifacts/{name}", tags=["artifacts"], responses=range_answers,
            summary="Size, sha256 and Range support of an artifact")
    def artifact_head(name: str, request: Request,
                      who: TokenEntry = Depends(require("device", "inspector"))) -> Response:
        return _artifact_response(request, name, who)

    return r


def create_app(fleet: Fleet, ready: Callable[[], bool] | None = None) -> FastAPI:
    app = FastAPI(title="Shadowline fleet", version="1", docs_url=None, redoc_url=None,
                  description="Bundles, releases, devices, staged rollouts; artifacts; mobile inspector endpoints.")
    mount_docs(app)  # Swagger UI and ReDoc from local assets: no CDN on a plant network
    app.state.fleet = fleet
    # before FastAPI reads a body: the token, then the route's size cap (fleet/http_guard.py)
    app.add_middleware(GuardMiddleware, fleet=fleet)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        # one line per problem, `key.path: message`, instead of pydantic's list: the CLI prints it as it comes
        lines = [".".join(str(p) for p in e["loc"] if p != "body") + ": " + e["msg"].replace("Value error, ", "", 1)
                 for e in err.errors()]
        return JSONResponse({"error": "; ".join(lines), "type": "ConfigError", "problems": lines}, status_code=422)

    @app.exception_handler(ShadowlineError)
    async def domain_error(request: Request, err: ShadowlineError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
        return JSONResponse({"error": str(err), "type": type(err).__name__}, status_code=err.http_status,
                            headers=headers)

    @app.exception_handler(BodyOverCap)
    async def body_over_cap(request: Request, err: BodyOverCap) -> JSONResponse:
        return JSONResponse({"error": err.error.args[0], "type": "TooLarge"}, status_code=413,
                            headers={"Connection": "close"})

    health: Answers = {413: ERRORS[413]}

    @app.get("/healthz", tags=["health"], summary="Liveness", responses=health)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: broker connected, rollout loop running",
             responses={**health, 503: {"description": "not ready: broker away or rollout loop stopped"}})
    def readyz() -> JSONResponse:
        ok = ready() if ready is not None else True
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    app.include_router(build_router())
    from fleet.api_decisions import build_router as decisions_router

    # sign-off, promotion and alert actions refuse with 409 when the state does not allow them
    app.include_router(decisions_router(), responses={**ERRORS, **CONFLICT})
    app.include_router(build_mobile_router(ERRORS))
    app.include_router(build_images_router(ERRORS))
    try:  # the dashboard is another package's; the API runs without it
        dashboard = importlib.import_module("fleet.dashboard")
    except ModuleNotFoundError as err:
        if err.name != "fleet.dashboard":
            log.error("fleet.dashboard did not import (%s); serving the API without it", err)
    except Exception:  # a broken dashboard must not take the admin API and artifact downloads down with it
        log.exception("fleet.dashboard did not import; serving the API without it")
    else:
        if hasattr(dashboard, "router"):
            app.include_router(dashboard.router)
    return app
