"""Which TensorRT is installed, and the API path that follows from it.

TensorRT 10.x (JetPack 6 ships 10.3) builds FP16 from the FP32 ONNX with `BuilderFlag.FP16` (weak typing).
TensorRT 11.x removed every precision flag and the INT8 calibrators: networks are strongly typed, so FP16 must come
from the bundle's `model.fp16.onnx`. INT8 comes only from an explicitly quantized (Q/DQ) ONNX on both, built as a
strongly typed network; calibrators are deprecated since 10.1 and gone in 11.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.errors import BackendUnavailable, ConfigError, ModelRejected

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
SUPPORTED_MAJORS = (10, 11)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Looked for first when INT8 is asked for; a bundle whose model.onnx is itself Q/DQ-quantized works too.
INT8_ONNX = "model.int8.onnx"


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """'10.3.0.30' -> 10.3.0; the fourth (build) number is ignored because the engine format follows the
        release, not the build."""
        m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
        if not m:
            raise BackendUnavailable(f"cannot read the TensorRT version from {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class BuildPlan:
    """Everything version-dependent about one build: which ONNX, which network flag, which builder flags."""

    version: TrtVersion
    precision: str
    onnx_file: str  # relative to the bundle
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # names in tensorrt.BuilderFlag to set
    clear_flags: tuple[str, ...] = ()  # names to clear (TF32 off for an FP32 engine that must match FP32 ORT)
    notes: list[str] = field(default_factory=list)


def check_supported(version: TrtVersion) -> None:
    if version.major not in SUPPORTED_MAJORS:
        hint = ("JetPack 5 (L4T r35) ships TensorRT 8.5: upgrade the device to JetPack 6 (TensorRT 10.3) or newer"
                if version.major < 10 else "this Shadowline knows TensorRT 10.x and 11.x only")
        raise BackendUnavailable(f"TensorRT {version} is not supported; {hint}")


def onnx_has_qdq(path: Path) -> bool:
    """True when the ONNX graph (or a subgraph) holds QuantizeLinear/DequantizeLinear nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            if node.op_type in QDQ_OPS:
                return True
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return False


def plan_build(version: TrtVersion, precision: str, bundle_files: set[str] | list[str],
               bundle_root: Path | None = None) -> BuildPlan:
    """Choose the ONNX file and flags for `precision` on `version`; refuse what that version cannot build."""
    check_supported(version)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    files = set(bundle_files)
    v11 = version.major >= 11
    if precision == "fp32":
        # TF32 is on by default in TensorRT and costs ~1e-3 relative error: an FP32 engine is judged element-wise
        # against FP32 ONNX Runtime, so TF32 is cleared where the flag exists.
        return BuildPlan(version, precision, "model.onnx", strongly_typed=v11, clear_flags=("TF32",))
    if precision == "fp16":
        if v11:
            if "model.fp16.onnx" not in files:
                raise ConfigError(
                    f"TensorRT {version} builds FP16 only from an FP16 ONNX (strong typing, no precision flags), and "
                    "this bundle has no model.fp16.onnx: re-export it with `shadowline export ... --fp16`")
            return BuildPlan(version, precision, "model.fp16.onnx", strongly_typed=True,
                             notes=["FP16 from model.fp16.onnx (TensorRT 11: strongly typed)"])
        notes = ["FP16 via BuilderFlag.FP16 (weak typing)"]
        if version.minor >= 12:
            notes.append("BuilderFlag.FP16 is deprecated since TensorRT 10.12; TensorRT 11 will use model.fp16.onnx")
        return BuildPlan(version, precision, "model.onnx", strongly_typed=False, builder_flags=("FP16",),
                         notes=notes)
    # int8: explicit quantization only.
    candidates = [f for f in (INT8_ONNX, "model.onnx") if f in files]
    for name in candidates:
        if bundle_root is None or onnx_has_qdq(bundle_root / name):
            return BuildPlan(version, precision, name, strongly_typed=True,
                             notes=[f"INT8 from the Q/DQ nodes of {name} (explicit quantization, no calibrator)"])
    raise ModelRejected(
        "INT8 needs an explicitly quantized ONNX (QuantizeLinear/DequantizeLinear nodes, e.g. from NVIDIA ModelOpt); "
        f"the bundle has none ({', '.join(sorted(f for f in files if f.endswith('.onnx')))}). INT8 calibrators are "
        "deprecated in TensorRT 10 and removed in 11, so Shadowline does not use them")


def network_flags(trt, plan: BuildPlan) -> int:
    """The bit mask for `Builder.create_network`. TensorRT 11 ignores STRONGLY_TYPED (always on) but keeps the
    name for compatibility; a build that lacks the name gets 0, which is strongly typed there anyway."""
    if not plan.strongly_typed:
        return 0
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def installed_version(trt) -> TrtVersion:
    return TrtVersion.parse(getattr(trt, "__version__", ""))


def resolve_precision(version: TrtVersion, requested: str, bundle_files: set[str] | list[str]) -> str:
    """'auto' -> fp16 where this TensorRT can build it from this bundle (10.x always; 11.x with model.fp16.onnx),
    else fp32. Explicit precisions pass through unchanged (plan_build refuses what cannot be built)."""
    if requested != "auto":
        return requested
    if version.major >= 11 and "model.fp16.onnx" not in set(bundle_files):
        return "fp32"
    return "fp16"
