"""The fleet's image routes: devices (and iPads, with an inspector token naming the device) upload the images of
their inspectors' cases (fleet.images); admins list and fetch them. The upload's body is streamed to disk, never
held in memory, and capped by the route (the guard's upload cap, then images.max_image_mb)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from fleet.http_guard import BODY_LIMIT_KEY, require
from fleet.protocol import DEVICE_ID_RE
from fleet.security import TokenEntry, device_of
from fleet.validation import ID_RE
from runtime.errors import AccessDenied, ConfigError


def build_images_router(errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    r = APIRouter(responses=errors)

    answers: dict[int | str, dict[str, Any]] = {409: {"description": "this device's prediction has another image already (the first stands)"},
               507: {"description": "the fleet's image store is at its disk budget: keep the image, retry later"}}

    @r.put("/api/images/{sha256}", tags=["images"], status_code=201, openapi_extra={BODY_LIMIT_KEY: "upload"},
           responses=answers,
           summary="Upload the image of a prediction; idempotent (same device, prediction and bytes: 200)")
    async def put_image(sha256: str, request: Request,
                        prediction_id: str = Query(max_length=128, pattern=ID_RE.pattern,
                                                   description="the prediction the image belongs to"),
                        reason: str = Query("", max_length=200, description="cases, comma-separated (override, "
                                                                            "near_threshold, ...)"),
                        suffix: str = Query(".jpg", max_length=9, description="the image's file extension"),
                        device: str | None = Query(None, max_length=64, description="inspector tokens: the device "
                                                   "that made the prediction (a device token is its own device)"),
                        who: TokenEntry = Depends(require("device", "inspector"))) -> JSONResponse:
        own = device_of(who)
        if own is not None:
            if device not in (None, own):
                raise AccessDenied(f"token {who.name!r} is device {own!r}; it cannot upload for {device!r}")
            device = own
        if device is None or not DEVICE_ID_RE.match(device):
            raise ConfigError("device: a valid device id is required with an inspector or admin token")
        length = request.headers.get("content-length")
        reasons = [x for x in reason.split(",") if x]
        stored = await request.app.state.fleet.images.put(
            device, prediction_id, sha256, reasons, suffix, who.name, request.stream(),
            int(length) if length and length.isdigit() else None)
        return JSONResponse({"device": device, "prediction_id": prediction_id, "sha256": stored.sha256,
                             "size": stored.size, "created": stored.created},
                            status_code=201 if stored.created else 200)

    @r.get("/api/images", tags=["images"], summary="Uploaded images, newest first")
    def list_images(request: Request, device: str | None = None, since: str | None = None,
                    limit: int = Query(100, ge=1, le=1000),
                    _: TokenEntry = Depends(require("viewer"))) -> list[dict[str, Any]]:
        return request.app.state.fleet.images.list(device, since, limit)

    @r.get("/api/images/{sha256}", tags=["images"], summary="One uploaded image's bytes")
    def get_image(sha256: str, request: Request, _: TokenEntry = Depends(require("viewer"))) -> FileResponse:
        return FileResponse(request.app.state.fleet.images.blob(sha256), media_type="application/octet-stream",
                            headers={"X-Content-SHA256": sha256})

    return r
