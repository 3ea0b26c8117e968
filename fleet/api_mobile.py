"""The fleet's routes for iPads and inspectors, and the device's inspector sync. An iPad posts the predictions
it made with Core ML (device token, its own device only, through the same validation as MQTT ingest); an
inspector's verdict must name a stored prediction of that device, and the fleet computes whether it is an override
and takes the inspector's identity from the token. Devices fetch the inspector token hashes so their review page
works offline."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from fleet.http_guard import BODY_LIMIT_KEY, require
from fleet.protocol import DEVICE_ID_RE, PredictionRecord, ReviewRecord
from fleet.security import TokenEntry, device_of
from fleet.validation import ID_RE, Refused
from runtime.errors import AccessDenied, Conflict, NotFound, ShadowlineError


class MobileVerdict(BaseModel):
    """An inspector's verdict. Who gave it is the token's holder; whether it overrides the model, the decision
    and the release come from the stored prediction, so the body names only the prediction and the verdict."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=8, max_length=64, pattern=ID_RE.pattern,
                           description="client-made UUID: posting twice is safe")
    prediction_id: str = Field(max_length=128, pattern=ID_RE.pattern, description="the prediction judged")
    device: str = Field(max_length=64, pattern=DEVICE_ID_RE.pattern, description="device (or iPad) that made the "
                                                                                  "prediction")
    verdict: Literal["confirm", "false_positive", "missed_defect", "bad_image"]
    defect_class: str | None = Field(None, max_length=200, description="missed_defect: the class the model missed")
    note: str = Field("", max_length=2000)


class MobilePredictions(BaseModel):
    """Predictions an iPad made with the release's Core ML package (fleet.protocol.PredictionRecord)."""

    model_config = ConfigDict(extra="forbid")
    records: list[PredictionRecord] = Field(max_length=1000)


class InspectorHash(BaseModel):
    name: str
    sha256: str


class Inspectors(BaseModel):
    inspectors: list[InspectorHash] = Field(description="every inspector token, by holder and sha256 (never the "
                                                        "token): the device checks logins against these offline")


def _conflict(reason: str, detail: str) -> ShadowlineError:
    return Conflict(detail) if reason == "verdict_mismatch" else NotFound(detail)


def build_mobile_router(errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    r = APIRouter(responses=errors)
    small = {BODY_LIMIT_KEY: 64 << 10}  # one verdict is well under 4 KB

    @r.get("/mobile/releases/{ref}/coreml", tags=["mobile"],
           summary="The Core ML package of a release's stage: URL, sha256, size")
    def mobile_coreml(ref: str, request: Request, stage: str = Query("verify", description="screen or verify"),
                      _: TokenEntry = Depends(require("inspector"))) -> dict[str, Any]:
        fleet = request.app.state.fleet
        spec = fleet.releases.get(ref)
        stages = {s.role: s for s in spec.stages}
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

    @r.post("/mobile/predictions", tags=["mobile"],
            summary="Record predictions an iPad made (device token of that iPad; validated like MQTT ingest)")
    def mobile_predictions(body: MobilePredictions, request: Request,
                           who: TokenEntry = Depends(require("device"))) -> dict[str, Any]:
        fleet = request.app.state.fleet
        device = device_of(who)
        if device is None:  # an admin token names no device: predictions must come from the device itself
            raise AccessDenied(f"token {who.name!r} is not a device token; predictions come from their device")
        good, refused = fleet.ingest.validator.screen("predictions", device, body.records, {})
        fleet.ingest.refuse(device, refused)
        new = fleet.store.insert_records("predictions", good) if good else 0
        if good:
            fleet.devices.seen(device)
        return {"stored": new, "duplicates": len(good) - new,
                "refused": [{"reason": x.reason, "detail": x.detail} for x in refused]}

    @r.post("/mobile/verdicts", tags=["mobile"], responses={409: errors[404] | {
                "description": "the verdict cannot apply to that prediction (a false positive on a frame the model "
                               "did not flag)"}},
            summary="Record an inspector's verdict on a stored prediction (idempotent by id)",
            openapi_extra=small)
    def mobile_verdict(body: MobileVerdict, request: Request,
                       who: TokenEntry = Depends(require("inspector"))) -> dict[str, Any]:
        fleet = request.app.state.fleet
        pred = fleet.store.predictions_by_id(body.device, [body.prediction_id]).get(body.prediction_id)
        # the client's claims are placeholders: review_of replaces them with what the prediction says
        fields: dict[str, Any] = {"prediction_id": body.prediction_id, "device": body.device, "inspector": who.name,
                                  "verdict": body.verdict, "defect_class": body.defect_class, "override": False,
                                  "model_decision": "pass", "release": "-", "revision": 0, "note": body.note}
        claim = ReviewRecord(**fields, **({"id": body.id} if body.id else {}))
        try:
            rec = fleet.ingest.validator.review_of(claim, pred)
        except Refused as err:
            fleet.ingest.refuse(body.device, [err.refusal])
            raise _conflict(err.refusal.reason, err.refusal.detail) from err
        new = fleet.store.insert_records("reviews", [rec])
        return {"id": rec.id, "stored": bool(new), "override": rec.override}

    @r.get("/api/devices/{device}/inspectors", tags=["devices"], response_model=Inspectors,
           summary="Inspector token hashes for the device's review page (that device's token only)")
    def device_inspectors(device: str, request: Request,
                          who: TokenEntry = Depends(require("device"))) -> Inspectors:
        mine = device_of(who)
        if "admin" not in who.roles and mine != device:
            raise AccessDenied(f"token {who.name!r} is the token of {mine!r}, not of {device!r}")
        entries = request.app.state.fleet.tokens.with_role("inspector")
        return Inspectors(inspectors=[InspectorHash(name=e.name, sha256=e.sha256) for e in entries])

    return r
