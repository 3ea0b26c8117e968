"""The bundle manifest: what a device needs to run, check and trust a model. Schema id + version."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.processing.spec import InputSpec, OutputSpec

SCHEMA_ID: Literal["shadowline.bundle.manifest"] = "shadowline.bundle.manifest"
SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VERSION_RE = re.compile(r"^\d+\.\d+$")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Thresholds(BaseModel):
    """A class flags when its score reaches its threshold; classes in `ignore` (e.g. "Normal") never flag."""

    model_config = ConfigDict(extra="forbid")
    default: float = Field(0.5, ge=0.0, le=1.0)
    per_class: dict[str, float] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list, description="classes that never cause a flag")

    @field_validator("per_class")
    @classmethod
    def _range(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold for {k!r} is {t}, outside 0..1")
        return v

    def for_class(self, label: str) -> float:
        return self.per_class.get(label, self.default)


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int
    tp: int
    fp: int
    fn: int
    threshold: float


class ValidationMetrics(BaseModel):
    images: int
    skipped: list[str] = Field(default_factory=list)
    per_class: dict[str, ClassMetrics]
    accuracy: float | None = None


class ParityCheck(BaseModel):
    """One comparison of an artifact against reference.npz."""

    artifact: str
    kind: Literal["onnx-fp16", "onnx-int8", "coreml", "tensorrt", "onnx"]
    precision: Literal["fp32", "fp16", "int8"]
    level: Literal["elementwise", "task", "elementwise+task"]
    passed: bool
    samples: int
    stats: dict[str, Any] = Field(default_factory=dict)
    tolerances: dict[str, float] = Field(default_factory=dict)
    detail: str = ""
    seconds: float | None = None


class Provenance(BaseModel):
    source_model: str
    source_model_sha256: str
    shadowline_version: str
    onnx_version: str
    onnxruntime_version: str
    coremltools_version: str | None = None
    python_version: str
    created_at: str


class BatchInfo(BaseModel):
    dynamic: bool
    min: int = 1
    opt: int = 1
    max: int = 1


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_id: Literal["shadowline.bundle.manifest"] = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: Literal["classify", "detect"]
    description: str = ""
    author: str = ""
    license: str = ""
    labels: list[str]
    label_renames: dict[str, str] = Field(default_factory=dict, description="index -> renamed duplicate label")
    input: InputSpec
    output: OutputSpec
    batch: BatchInfo
    thresholds: Thresholds
    validation: ValidationMetrics | None = None
    files: dict[str, FileEntry]
    provenance: Provenance
    parity: list[ParityCheck] = Field(default_factory=list)
    extras: dict[str, Any] = Field(default_factory=dict, description="artifact-specific details (coreml, ...)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bundle name {v!r} must be lower-case letters, digits, '.', '_' or '-'")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not VERSION_RE.match(v):
            raise ValueError(f"version {v!r} must be MAJOR.MINOR, e.g. 1.2")
        return v

    @model_validator(mode="after")
    def _labels(self) -> Manifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        unknown = (set(self.thresholds.per_class) | set(self.thresholds.ignore)) - set(self.labels)
        if unknown:
            raise ValueError(f"thresholds name unknown classes: {sorted(unknown)}")
        for name in self.files:
            if name.startswith("/") or ".." in name.split("/") or name in ("manifest.json", "manifest.sig"):
                raise ValueError(f"file name {name!r} is not allowed in a bundle")
        return self

    @property
    def bundle_id(self) -> str:
        return f"{self.name}-v{self.version}"

    def to_bytes(self) -> bytes:
        """The exact bytes that are written to manifest.json and signed."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode("utf-8")
