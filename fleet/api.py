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
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.apidocs import mount_docs
from fleet.artifacts import resolve
from fleet.bodylimit import BodyLimit
from fleet.protocol import DEVICE_ID_RE, ReleaseSpec, ReviewRecord, StageSpec
from fleet.releases import ThresholdChange
from fleet.rollout import RolloutRequest
from fleet.security import TokenEntry
from fleet.service import Fleet
from runtime.errors import BundleError, ConfigError, NotFound, ShadowlineError, TooLarge

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="fleet API token (shadowline fleet token create)")


class Unauthorized(Exception):
    pass


class Forbidden(Exception):
    pass


def require(*roles: str) -> Callable[..., TokenEntry]:
    """Dependency: 401 without a valid token, 403 when the token has none of `roles` (admin has every role)."""

    def check(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenEntry:
        if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
            raise Unauthorized("a bearer token is required")
        entry = request.app.state.fleet.tokens.check(cred.credentials)
        if entry is None:
            raise Unauthorized("unknown token")
        if "admin" not in entry.roles and not set(roles) & set(entry.roles):
            raise Forbidden(f"token {entry.name!r} lacks the role {' or '.join(roles)}")
        return entry

    return check


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[str] | None = Field(None, description="replace the device's groups")
    tags: dict[str, str] | None = Field(None, description="replace the device's tags")


class MobileVerdict(BaseModel):
    """An inspector's verdict from the iOS app; the inspector is the token's holder."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=8, max_length=64, description="client-made UUID: posting twice is safe")
    prediction_id: str = Field(max_length=128)
    device: str = Field(description="device (or iPad) that made the prediction")
    verdict: Literal["confirm", "false_positive", "missed_defect", "bad_image"]
    defect_class: str | None = Field(None, max_length=200)
    override: bool
    model_decision: Literal["pass", "flag", "error"]
    release: str
    revision: int = Field(ge=0)
    top_label: str | None = None
    top_score: float | None = None
    note: str = Field("", max_length=2000)


class HaltRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("manual halt", max_length=500, description="why the rollout is halted (kept on it)")


def _artifact_response(request: Request, name: str) -> Response:
    """Starlette's FileResponse serves Range requests (single, suffix, multi-range as multipart/byteranges, 416
    past the end). It is handed the stat that `resolve` checked against the registry, so the length it announces
    is the registered size."""
    fleet: Fleet = request.app.state.fleet
    path, size, sha = resolve(fleet.store, fleet.artifacts_dir, name)
    st = os.stat(path)
    if st.st_size != size:  # replaced between the check and now: refuse rather than announce another length
        raise BundleError(f"artifact {name!r} changed on disk while being served; retry")
    media = "application/x-tar" if name.endswith(".tar") else "application/zip"
    return FileResponse(path, media_type=media, stat_result=st,
                        headers={"ETag": f'"{sha}"', "X-Content-SHA256": sha})


def build_router() -> APIRouter:
    r = APIRouter()
    admin, viewer = require("admin"), require("viewer")

    @r.post("/api/bundles", tags=["bundles"], summary="Push a signed bundle (.tar body); verified before storing")
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

    @r.post("/api/releases", tags=["releases"], summary="Create a release; the fleet assigns its revision")
    def create_release(spec: ReleaseSpec, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.releases.create(spec).model_dump(mode="json")

    @r.post("/api/releases/{ref}/thresholds", tags=["releases"],
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

    @r.post("/api/rollouts", tags=["rollouts"], summary="Start a staged rollout of a release to a group")
    def start_rollout(req: RolloutRequest, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.start(req)

    @r.get("/api/rollouts", tags=["rollouts"])
    def list_rollouts(request: Request, _: TokenEntry = Depends(viewer)) -> list[dict[str, Any]]:
        return request.app.state.fleet.rollouts.list()

    @r.get("/api/rollouts/{rid}", tags=["rollouts"])
    def rollout_status(rid: str, request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.status(rid)

    @r.post("/api/rollouts/{rid}/rollback", tags=["rollouts"],
            summary="Return every device the rollout touched to its previous release")
    def rollback(rid: str, request: Request, _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.rollback(rid)

    @r.post("/api/rollouts/{rid}/halt", tags=["rollouts"],
            summary="Stop a running rollout from starting further waves; devices stay where they are")
    def halt(rid: str, request: Request, body: HaltRequest | None = None,
             _: TokenEntry = Depends(admin)) -> dict[str, Any]:
        return request.app.state.fleet.rollouts.halt(rid, (body or HaltRequest()).reason)

    @r.get("/api/ingest", tags=["ingest"], summary="Ingest counters and malformed messages by topic")
    def ingest_stats(request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        fleet: Fleet = request.app.state.fleet
        return {**fleet.ingest.stats.as_dict(),
                "stored": {k: fleet.store.count(k) for k in ("predictions", "reviews", "metrics", "alerts", "events")},
                "malformed_by_topic": fleet.store.malformed()}

    @r.get("/artifacts/{name}", tags=["artifacts"],
           summary="Download a bundle .tar or Core ML .zip; Range requests resume")
    def artifact(name: str, request: Request, _: TokenEntry = Depends(require("device", "inspector"))) -> Response:
        return _artifact_response(request, name)

    @r.head("/artifacts/{name}", tags=["artifacts"], summary="Size, sha256 and Range support of an artifact")
    def artifact_head(name: str, request: Request,
                      _: TokenEntry = Depends(require("device", "inspector"))) -> Response:
        return _artifact_response(request, name)

    @r.get("/mobile/releases/{ref}/coreml", tags=["mobile"],
           summary="The Core ML package of a release's stage: URL, sha256, size")
    def mobile_coreml(ref: str, request: Request, stage: str = Query("verify", description="screen or verify"),
                      _: TokenEntry = Depends(require("inspector"))) -> dict[str, Any]:
        fleet: Fleet = request.app.state.fleet
        spec = fleet.releases.get(ref)
        stages: dict[str, StageSpec] = {s.role: s for s in spec.stages}
        chosen = stages.get(stage) or (spec.stages[-1] if stage == "verify" and len(spec.stages) == 1 else None)
        if chosen is None:
            raise NotFound(f"release {spec.ref} has no {stage!r} stage")
        b = fleet.store.get("bundles", chosen.bundle)
        if b is None or not b["coreml"]:
            raise NotFound(f"bundle {chosen.bundle} of {spec.ref} has no Core ML package (export it with --coreml)")
        return {"release": spec.ref, "stage": chosen.role, "bundle": chosen.bundle,
                "url": f"{fleet.config.base_url}/artifacts/{b['coreml']}", "sha256": b["coreml_sha256"],
                "size": b["coreml_size"], "thresholds": chosen.thresholds, "threshold": chosen.threshold,
                "mode": spec.mode}

    @r.post("/mobile/verdicts", tags=["mobile"], summary="Record an inspector's verdict (idempotent by id)")
    def mobile_verdict(body: MobileVerdict, request: Request,
                       who: TokenEntry = Depends(require("inspector"))) -> dict[str, Any]:
        fleet: Fleet = request.app.state.fleet
        if not DEVICE_ID_RE.match(body.device):
            raise ConfigError(f"invalid device id {body.device!r}")
        data = body.model_dump(exclude_none=True)
        try:
            rec = ReviewRecord.model_validate({**data, "inspector": who.name})
        except ValidationError as err:
            raise ConfigError(f"verdict: {err.errors()[0]['loc']} {err.errors()[0]['msg']}") from err
        new = fleet.store.insert_records("reviews", [rec.model_dump(mode="json")])
        return {"id": rec.id, "stored": bool(new)}

    return r


def create_app(fleet: Fleet, ready: Callable[[], bool] | None = None) -> FastAPI:
    app = FastAPI(title="Shadowline fleet", version="1", docs_url=None, redoc_url=None,
                  description="Bundles, releases, devices, staged rollouts; artifacts; mobile inspector endpoints.")
    mount_docs(app)  # Swagger UI and ReDoc from local assets: no CDN on a plant network
    app.state.fleet = fleet
    body_cap = int(fleet.config.max_body_kb * 1024)
    # POST /api/bundles enforces max_upload_mb itself (its refusal names the bundle sent)
    app.add_middleware(BodyLimit, limit_for=lambda path: None if path == "/api/bundles" else body_cap)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        # one line per problem, `key.path: message`, instead of pydantic's list: the CLI prints it as it comes
        lines = [".".join(str(p) for p in e["loc"] if p != "body") + ": " + e["msg"].replace("Value error, ", "", 1)
                 for e in err.errors()]
        return JSONResponse({"error": "; ".join(lines), "type": "ConfigError", "problems": lines}, status_code=422)

    @app.exception_handler(ShadowlineError)
    async def domain_error(request: Request, err: ShadowlineError) -> JSONResponse:
        return JSONResponse({"error": str(err), "type": type(err).__name__}, status_code=err.http_status)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, err: Unauthorized) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, err: Forbidden) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=403)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: broker connected, rollout loop running")
    def readyz() -> JSONResponse:
        ok = ready() if ready is not None else True
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    app.include_router(build_router())
    from fleet.api_decisions import build_router as decisions_router  # it imports `require` from here

    app.include_router(decisions_router())
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
